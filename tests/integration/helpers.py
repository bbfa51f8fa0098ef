"""Small helpers for the integration tests: polling with a deadline instead of sleeping."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """The local cluster as set up by hack/cluster.sh (see the ``cluster`` fixture)."""

    kubeconfig: str
    bin_dir: str


class WaitTimeout(AssertionError):
    """Raised by wait_for when the predicate did not become truthy in time (a test failure)."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    message: str,
    interval: float = 0.1,
    max_interval: float = 1.0,
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Polls every ``interval`` seconds (backing off up to ``max_interval``) until ``timeout`` seconds
    have passed, then raises WaitTimeout with ``message``, the last value returned and the last
    exception raised by the predicate (exceptions are retried, not propagated, so a transient 404
    or connection error does not end the wait early).
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            value = predicate()
        except Exception as exc:  # retried until the deadline, reported on timeout
            last_error = exc
        else:
            last_error = None
            if value:
                return value
            last_value = value
        now = time.monotonic()
        if now >= deadline:
            detail = f"last value: {last_value!r}"
            if last_error is not None:
                detail += f"; last error: {type(last_error).__name__}: {last_error}"
            raise WaitTimeout(f"timed out after {timeout:g}s ({attempts} attempts): {message} ({detail})")
        time.sleep(min(interval, deadline - now))
        interval = min(interval * 1.5, max_interval)


@contextmanager
def temporary_namespace(api: client.ApiClient, name: str, labels: dict[str, str]) -> Iterator[str]:
    """A namespace that exists for the block, with its default ServiceAccount ready."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    try:
        # Pods are rejected until the ServiceAccount controller has created "default".
        wait_for(lambda: core.read_namespaced_service_account("default", name), 60, f"ServiceAccount default in {name}")
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


HACK_BUILD = Path(__file__).resolve().parents[2] / "hack" / "testenv-build.sh"


def tool_dir(*tools: str) -> Path:
    """The bin dir of hack/testenv-build.sh, building `tools` first if missing (a no-op when built)."""
    cache = Path(os.environ.get("APWA_CACHE_DIR") or Path.home() / ".cache" / "apwa")
    cache.mkdir(parents=True, exist_ok=True)
    bin_dir = ""
    for tool in tools:
        # The same lock hack/cluster.sh takes: two concurrent go builds only slow each other down.
        proc = subprocess.run(
            ["flock", str(cache / ".build.lock"), "bash", str(HACK_BUILD), tool],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"hack/testenv-build.sh {tool} failed:\n{proc.stderr[-3000:]}", pytrace=False)
        bin_dir = proc.stdout.strip().splitlines()[-1]
    return Path(bin_dir)
