"""Where a workload's objects live in its store: one deterministic key per thing.

    <prefix><namespace>/<name>-<uid>/results/<index:08>/<pod uid>   one subtask pod's result
    <prefix><namespace>/<name>-<uid>/reduce/<pod uid>               the reduce pod's result
    <prefix><namespace>/<name>-<uid>/outcomes/<chunk:06>.json       recorded outcomes, by index
    <prefix><namespace>/<name>-<uid>/plan.json                      a stored plan too big for etcd
    <prefix><namespace>/<name>-<uid>/plan-<sha256:16>.json.gz       the same, content-addressed (inputs)

The workload's uid makes a re-created workload of the same name start afresh; the pod's uid
gives every attempt of a subtask its own object, so a retried pod never overwrites (or is
mistaken for) an earlier attempt's result. Pure string functions: the sidecar, the operator and
`apwa results` all call these, so they can't disagree.
"""

from __future__ import annotations

OUTCOME_CHUNK = 1000  # outcomes per chunk object (ConfigMaps hold 200: their 1 MiB limit)


def location_env(bucket: str, region: str, endpoint: str | None, path_style: bool) -> dict[str, str]:
    """A bucket's non-secret settings as the environment the store's containers read
    (store.s3.Location.from_env): rendering writes it into pods, tests run the agent with it."""
    env = {"APWA_S3_BUCKET": bucket, "APWA_S3_REGION": region}
    if endpoint:
        env["APWA_S3_ENDPOINT"] = endpoint
    if path_style:
        env["APWA_S3_PATH_STYLE"] = "true"
    return env


def workload_root(prefix: str, namespace: str, name: str, uid: str) -> str:
    return f"{prefix}{namespace}/{name}-{uid}/"


def result_prefix(root: str, index: int | None) -> str:
    """Where the pods of subtask `index` (None: the reduce step) put their results."""
    return f"{root}reduce/" if index is None else f"{root}results/{index:08d}/"


def result_key(root: str, index: int | None, pod_uid: str) -> str:
    return result_prefix(root, index) + pod_uid


def outcomes_prefix(root: str) -> str:
    return f"{root}outcomes/"


def outcome_chunk_key(root: str, chunk: int) -> str:
    return f"{outcomes_prefix(root)}{chunk:06d}.json"


def plan_key(root: str) -> str:
    return f"{root}plan.json"


def plan_object_key(root: str, digest: str) -> str:
    """A stored plan named by its content (the sha256 of the gzip bytes): two operators racing to
    store a plan write different objects, and the ConfigMap that points at one decides which."""
    return f"{root}plan-{digest[:16]}.json.gz"
