"""Stand-ins for the store sidecars of kwok pods (kwok runs no container): a thread that watches a
workload's pods and uploads, for each new pod, the object its sidecar would have uploaded, under
the same key contract (apwa.results.keys.result_key: workload uid, index, pod uid). kwok then
reports the sidecar's message from KWOK_STORE_MESSAGE; the sizes must agree."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import obstore
from apwa.results.keys import result_key, workload_root
from kubernetes import client, watch
from obstore.store import S3Store
from s3_env import S3Server


def bucket_of(s3: S3Server) -> S3Store:
    return S3Store(
        s3.bucket,
        config={
            "endpoint": s3.endpoint,
            "region": s3.region,
            "access_key_id": s3.access_key,
            "secret_access_key": s3.secret_key,
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )


def value_of(index: int, size: int) -> bytes:
    """A JSON result of exactly `size` bytes that says which subtask made it."""
    head = json.dumps({"index": index, "pad": ""}, separators=(",", ":")).encode()
    pad = size - len(head)
    assert pad >= 0, f"{size} bytes is too small for a result"
    return json.dumps({"index": index, "pad": "x" * pad}, separators=(",", ":")).encode()


def store_message(size: int) -> str:
    return json.dumps({"apwa": 1, "stored": {"size": size}}, separators=(",", ":"))


class FakeSidecars:
    """Uploads `size_of(index)` bytes for every pod of workload `name` in `namespace`."""

    def __init__(
        self, api: client.ApiClient, s3: S3Server, namespace: str, name: str, prefix: str, size_of: Callable[[int], int]
    ) -> None:
        self.api, self.ns, self.name, self.prefix, self.size_of = api, namespace, name, prefix, size_of
        self.store = bucket_of(s3)
        self.uploaded: set[str] = set()
        self.errors: list[BaseException] = []
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> FakeSidecars:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        # One watch resumed from the last resourceVersion, never a fresh list: a re-list of 10,000
        # pods takes longer than a pod lives (the operator releases and deletes pods as soon as their
        # outcome is recorded), so a pod created during the gap would never get its object.
        core = client.CoreV1Api(self.api)
        version: str | None = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    core.list_namespaced_pod,
                    self.ns,
                    label_selector=f"apwa.dev/workload={self.name},apwa.dev/role=subtask",
                    timeout_seconds=5,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                ):
                    version = event["raw_object"]["metadata"]["resourceVersion"]
                    pod = event["object"]
                    if event["type"] == "BOOKMARK" or pod.metadata.uid in self._seen:
                        continue
                    self._seen.add(pod.metadata.uid)
                    self._pool.submit(self._upload, pod)
                    if self._stop.is_set():
                        break
            except client.ApiException as e:
                if e.status != 410:
                    self.errors.append(e)
                version = None  # expired: a list again (rare; the test then reports what it missed)
            except Exception as e:  # reported by the test through .errors
                self.errors.append(e)

    def _upload(self, pod: Any) -> None:
        uid = (pod.metadata.labels or {})["apwa.dev/workload-uid"]
        index = int(pod.metadata.labels["apwa.dev/index"])
        root = workload_root(self.prefix, self.ns, self.name, uid)
        key = result_key(root, index, pod.metadata.uid)
        try:
            obstore.put(self.store, key, value_of(index, self.size_of(index)))
        except Exception as e:
            self.errors.append(e)
            return
        with self._lock:
            self.uploaded.add(key)
