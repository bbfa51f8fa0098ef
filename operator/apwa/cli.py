"""The `apwa` command: crd | validate | plan | run --local | results | operator, and the live
commands against a cluster (get | watch | describe | logs | retry, cli_live.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from apwa import __version__
from apwa.api.models import ParallelWorkload
from apwa.api.vocabulary import Phase, Role
from apwa.cli_live import LiveError
from apwa.cli_live import register as register_live
from apwa.common.messages import no_key
from apwa.manifest import ManifestError, Manifests, load
from apwa.planning import DEFAULT_MAX_SUBTASKS, PlanningError, Subtask, plan
from apwa.rendering import (
    LABEL_ROLE,
    LABEL_WORKLOAD,
    Owner,
    RenderError,
    label_value,
    render_job,
    render_network_policy,
)
from apwa.results import decode_value


class CliError(Exception):
    pass


def _data_for(workload: ParallelWorkload, manifests: Manifests, extra: dict[str, dict[str, str]]) -> Any:
    """Offline stand-in for what the operator fetches: ConfigMaps come from the same file(s)."""
    d = workload.spec.decomposition
    if d.config_map_ref is not None:
        ref = d.config_map_ref
        cms = {**manifests.config_maps, **extra}
        if ref.name not in cms:
            raise PlanningError(
                "spec.decomposition.configMapRef.name",
                f"ConfigMap {ref.name!r} is not in the file; add it to the file or pass --configmap FILE",
            )
        if ref.key not in cms[ref.name]:
            raise PlanningError(
                "spec.decomposition.configMapRef.key",
                no_key("ConfigMap", ref.name, ref.key, cms[ref.name]),
            )
        return cms[ref.name][ref.key]
    if d.objects is not None:
        raise PlanningError(
            "spec.decomposition.objects",
            f"the objects under prefix {d.objects.prefix!r} are listed by the operator on a cluster, with the "
            "credentials of spec.store's Secret, and each pod downloads its own; `apwa plan` and `apwa run --local` "
            "can't do either: kubectl apply the workload on a cluster that runs the APWA operator",
        )
    if d.planner is not None:
        from apwa.clients.planners import plan_offline

        return plan_offline(workload, {**manifests.config_maps, **extra})
    return None


def _load_all(args: argparse.Namespace) -> tuple[Manifests, dict[str, dict[str, str]]]:
    manifests = load(args.file)
    extra: dict[str, dict[str, str]] = {}
    for f in getattr(args, "configmap", None) or []:
        extra.update(load_config_maps(f))
    return manifests, extra


def load_config_maps(path: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise CliError(f"{path}: {e}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            out[doc["metadata"]["name"]] = {k: str(v) for k, v in (doc.get("data") or {}).items()}
    if not out:
        raise CliError(f"{path}: no ConfigMap found")
    return out


def _select(manifests: Manifests, name: str | None) -> ParallelWorkload:
    if name:
        for w in manifests.workloads:
            if w.metadata.name == name:
                return w
        raise CliError(f"no ParallelWorkload named {name!r} in the file")
    if len(manifests.workloads) > 1:
        names = ", ".join(w.metadata.name for w in manifests.workloads)
        raise CliError(f"the file has several ParallelWorkloads ({names}); pick one with --name")
    return manifests.workloads[0]


def _plan(args: argparse.Namespace) -> tuple[ParallelWorkload, list[Subtask]]:
    manifests, extra = _load_all(args)
    workload = _select(manifests, args.name)
    return workload, plan(workload.spec, data=_data_for(workload, manifests, extra), max_subtasks=args.max_subtasks)


def cmd_crd(args: argparse.Namespace) -> int:
    from apwa.api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    manifests, extra = _load_all(args)
    for w in manifests.workloads:
        if w.spec.decomposition.planner is not None:
            print(f"{args.file}: ParallelWorkload {w.metadata.name} is valid (dynamic plan not called)")
            continue
        if w.spec.decomposition.objects is not None:
            print(f"{args.file}: ParallelWorkload {w.metadata.name} is valid (objects not listed: the operator does)")
            continue
        subtasks = plan(w.spec, data=_data_for(w, manifests, extra), max_subtasks=args.max_subtasks)
        owner = Owner(w.metadata.name, w.metadata.namespace)
        for s in subtasks:
            render_job(owner, w.spec, s, len(subtasks))
        print(f"{args.file}: ParallelWorkload {w.metadata.name} is valid ({len(subtasks)} subtasks)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    workload, subtasks = _plan(args)
    if args.render:
        owner = Owner(workload.metadata.name, workload.metadata.namespace, None, workload.metadata.labels or {})
        spec = workload.spec
        docs = [render_network_policy(owner, spec.isolation_or_default, spec.store, spec.agent)]
        docs += [render_job(owner, workload.spec, s, len(subtasks)) for s in subtasks]
        if args.output == "json":
            json.dump({"apiVersion": "v1", "kind": "List", "items": docs}, sys.stdout, indent=2)
            print()
        else:
            sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
        return 0
    rows = [{"index": s.index, "template": s.template, "item": s.item} for s in subtasks]
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(rows, sort_keys=False))
    else:
        width = max(len("INDEX"), len(str(len(subtasks) - 1)))
        twidth = max(len("TEMPLATE"), *(len(s.template) for s in subtasks))
        print(f"{'INDEX':<{width}}  {'TEMPLATE':<{twidth}}  ITEM")
        for s in subtasks:
            item = json.dumps(s.item, separators=(",", ":"))
            print(f"{s.index:<{width}}  {s.template:<{twidth}}  {item[:100]}{'...' if len(item) > 100 else ''}")
        print(f"{len(subtasks)} subtasks", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise CliError("only `apwa run --local FILE` exists; to run on a cluster, kubectl apply the file")
    from apwa.local import run_local

    workload, subtasks = _plan(args)
    if args.parallelism:
        workload.spec.parallelism = args.parallelism
    status = run_local(workload, subtasks, progress=not args.quiet)
    sys.stdout.write(yaml.safe_dump({"status": status}, sort_keys=False, allow_unicode=True))
    return 0 if status["phase"] == Phase.SUCCEEDED else 1


def cmd_results(args: argparse.Namespace) -> int:
    """Every stored outcome of a workload on the cluster, in index order, streamed: one chunk of
    outcomes (and, with a store, one result) in memory at a time, whatever the workload's size."""
    from kubernetes import client, config

    try:
        config.load_kube_config(context=args.context)
        _, active = config.list_kube_config_contexts()
        namespace = args.namespace or active["context"].get("namespace", "default")
    except config.ConfigException as e:
        raise CliError(f"no usable kubeconfig: {e}") from None
    api = client.ApiClient()
    try:
        workload = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "apwa.dev", "v1alpha1", namespace, "parallelworkloads", args.workload
        )
    except client.ApiException as e:
        if e.status == 404:
            raise CliError(f"ParallelWorkload {args.workload!r} not found in namespace {namespace!r}") from None
        raise CliError(f"the API server answered {e.status}: {e.reason}") from None
    ref = (workload.get("status") or {}).get("resultsRef") or {}
    if not ref.get("objectPrefix"):
        _print_rows(_config_map_rows(api, namespace, args.workload, ref), args.output, args.succeeded_only)
        return 0
    from apwa.store import exit_without_finalizing

    _print_rows(_stored_rows(api, namespace, workload, ref, resolve=not args.refs), args.output, args.succeeded_only)
    exit_without_finalizing(0)
    return 0


def _print_rows(rows: Any, output: str, succeeded_only: bool) -> None:
    first = True
    if output == "json":
        sys.stdout.write("[")
    for row in rows:
        if succeeded_only and not row["succeeded"]:
            continue
        if output == "json":
            sys.stdout.write(("\n  " if first else ",\n  ") + json.dumps(row, ensure_ascii=False))
        else:
            sys.stdout.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
        first = False
    if output == "json":
        sys.stdout.write("]\n" if first else "\n]\n")
    sys.stdout.flush()


def _row(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("ok"):
        if "stored" in entry:
            return {"index": index, "succeeded": True, "stored": entry["stored"]}
        return {"index": index, "succeeded": True, "result": entry.get("result")}
    return {
        "index": index,
        "succeeded": False,
        "reason": entry.get("reason", ""),
        "message": entry.get("message", ""),
        "exitCode": entry.get("exitCode"),
    }


def _config_map_rows(api: Any, namespace: str, name: str, ref: dict[str, Any]) -> Any:
    from kubernetes import client

    from apwa.controller.store import chunk_name, read_payload

    core = client.CoreV1Api(api)
    if "chunks" in ref and ref.get("configMapPrefix"):
        names = [chunk_name(name, n) for n in range(int(ref["chunks"]))]
    else:  # a status written before resultsRef existed: find the chunks by label
        selector = f"{LABEL_WORKLOAD}={label_value(name)},{LABEL_ROLE}={Role.RESULTS}"
        listed = core.list_namespaced_config_map(namespace, label_selector=selector).items
        names = sorted((cm.metadata.name for cm in listed), key=lambda n: int(n.rsplit("-", 1)[1]))
    for cm_name in names:
        try:
            cm = core.read_namespaced_config_map(cm_name, namespace)
        except client.ApiException as e:
            if e.status == 404:
                continue  # a chunk nothing was recorded in yet
            raise CliError(f"reading ConfigMap {cm_name}: the API server answered {e.status}: {e.reason}") from None
        entries = json.loads(read_payload(api.sanitize_for_serialization(cm)) or b"{}").get("outcomes", {})
        for i in sorted(entries, key=int):
            if "retry" not in entries[i]:  # a subtask a retry runs again: no outcome yet
                yield _row(int(i), entries[i])


def _stored_rows(api: Any, namespace: str, workload: dict[str, Any], ref: dict[str, Any], *, resolve: bool) -> Any:
    """The outcome chunks from the bucket, one at a time, each result fetched as it is printed."""
    import asyncio
    import os

    from kubernetes import client

    from apwa.store.s3 import Bucket, Credentials, Location, StoreError

    spec = ParallelWorkload.model_validate(workload).spec
    assert spec.store is not None, "resultsRef names a bucket only for workloads with spec.store"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        creds = Credentials.from_env()
    else:
        secret = spec.store.s3.credentials_secret
        try:
            data = client.CoreV1Api(api).read_namespaced_secret(secret, namespace).data or {}
        except client.ApiException as e:
            raise CliError(
                f"reading Secret {secret!r} for the store's credentials: the API server answered {e.status}: "
                f"{e.reason} (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
        creds = Credentials.from_secret_data(data, secret)
    bucket = Bucket(Location.from_spec(spec.store.s3), creds)
    loop = asyncio.new_event_loop()
    try:
        for chunk in range(int(ref.get("chunks", 0))):
            key = f"{ref['objectPrefix']}{chunk:06d}.json"
            raw = loop.run_until_complete(bucket.get(key))
            entries = json.loads(raw).get("outcomes", {}) if raw else {}
            for i in sorted(entries, key=int):
                if "retry" in entries[i]:  # a subtask a retry runs again: no outcome yet
                    continue
                row = _row(int(i), entries[i])
                if resolve and "stored" in row:
                    data = loop.run_until_complete(bucket.get(row["stored"]["key"]))
                    if data is None:
                        raise CliError(f"subtask {i}: result object {row['stored']['key']} is missing")
                    row = {"index": row["index"], "succeeded": True, "result": decode_value(data)}
                yield row
    except StoreError as e:
        raise CliError(e.message) from None
    finally:
        loop.close()


def cmd_operator(args: argparse.Namespace) -> int:
    from apwa.controller.main import run_operator

    return run_operator(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="apwa", description="Massively parallel agent workloads on Kubernetes.")
    p.add_argument("--version", action="version", version=f"apwa {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("crd", help="print the CustomResourceDefinition").set_defaults(func=cmd_crd)

    def with_file(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("file", help="a YAML file with a ParallelWorkload (and any ConfigMaps it reads)")
        sp.add_argument("--name", help="which ParallelWorkload, when the file has several")
        sp.add_argument("--configmap", action="append", metavar="FILE", help="extra ConfigMap manifests")
        sp.add_argument("--max-subtasks", type=int, default=DEFAULT_MAX_SUBTASKS, help="refuse larger plans")

    v = sub.add_parser("validate", help="check a manifest; every error is printed with its field path")
    with_file(v)
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="list the subtasks a manifest decomposes into")
    with_file(pl)
    pl.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    pl.add_argument("--render", action="store_true", help="print the Jobs and NetworkPolicy instead")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("run", help="run a workload: --local runs its subtasks as local processes")
    with_file(r)
    r.add_argument("--local", action="store_true", help="run on this machine (required)")
    r.add_argument("--parallelism", type=int, help="override spec.parallelism")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    res = sub.add_parser("results", help="print every stored subtask outcome of a workload on the cluster")
    res.add_argument("workload", help="ParallelWorkload name")
    res.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    res.add_argument("--context", help="kubeconfig context")
    res.add_argument("-o", "--output", choices=["json", "jsonl"], default="json")
    res.add_argument("--succeeded-only", action="store_true", help="leave out failed subtasks")
    res.add_argument(
        "--refs", action="store_true", help="with a store: print each stored result's reference, not its value"
    )
    res.set_defaults(func=cmd_results)

    register_live(sub)

    o = sub.add_parser("operator", help="run the operator against the current kubeconfig or in cluster")
    o.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="namespace to watch (repeatable); default: all (env APWA_NAMESPACES, comma-separated)",
    )
    o.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (env APWA_LOG_LEVEL)")
    o.add_argument("--metrics-port", type=int, default=None, help="metrics and health port (env APWA_METRICS_PORT)")
    o.add_argument("--max-subtasks", type=int, default=None, help=f"default {DEFAULT_MAX_SUBTASKS}")
    o.add_argument(
        "--peering",
        default=None,
        help="kopf peering name, for several replicas with one active (needs kopf's peering CRDs); "
        "default: standalone (env APWA_PEERING)",
    )
    o.add_argument(
        "--leader-election",
        action="store_true",
        help="several replicas, one acting: hold a coordination.k8s.io Lease to act (env APWA_LEADER_ELECTION=true)",
    )
    o.add_argument(
        "--leader-election-namespace",
        default=None,
        help="the Lease's namespace (default: env POD_NAMESPACE, else the service account's namespace)",
    )
    o.add_argument(
        "--leader-election-id",
        default=None,
        help="the Lease's name (env APWA_LEADER_ELECTION_ID; default apwa-operator)",
    )
    o.set_defaults(func=cmd_operator)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
    except (PlanningError, RenderError) as e:
        print(f"error: {e}", file=sys.stderr)
    except (CliError, LiveError) as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: every subtask process was stopped", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
