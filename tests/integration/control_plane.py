"""Stopping and starting the local control plane's components (kwokctl's binary runtime).

kwokctl starts each component as a detached process and records its pid in
``$KWOK_WORKDIR/clusters/<name>/pids/<component>.pid``; its log is ``logs/<component>.log``. kwokctl
itself can only stop or start the whole cluster, so a fault test that restarts one component reads
the component's command line from /proc, stops it, and starts the same command again (detached,
appending to the same log, its pid written back so that ``hack/cluster.sh down`` still stops it).

The kube-controller-manager and kube-scheduler run with leader election: an API server down longer
than their renew deadline (10 s) makes them exit. ``start`` therefore also starts any component
that died meanwhile, as a kubelet would restart a static pod.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import Cluster, wait_for

CACHE = Path(os.environ.get("APWA_CACHE_DIR", Path.home() / ".cache" / "apwa"))


class Component(enum.StrEnum):
    ETCD = "etcd"
    APISERVER = "kube-apiserver"
    CONTROLLER_MANAGER = "kube-controller-manager"
    SCHEDULER = "kube-scheduler"
    KWOK = "kwok-controller"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child, not reaped yet) is dead too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class ControlPlane:
    def __init__(self, cluster: Cluster, name: str | None = None) -> None:
        self.cluster = cluster
        self.name = name or os.environ.get("APWA_CLUSTER_NAME", "apwa")
        self.dir = CACHE / "kwok" / "clusters" / self.name
        # Read once, while everything runs: a component that dies later is started from this.
        self.commands = {c: self._command(c) for c in Component}

    def _pid_file(self, c: Component) -> Path:
        return self.dir / "pids" / f"{c}.pid"

    def pid(self, c: Component) -> int | None:
        try:
            return int(self._pid_file(c).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _command(self, c: Component) -> Command:
        pid = self.pid(c)
        if pid is None or not _alive(pid):
            raise AssertionError(f"{c} of cluster {self.name} is not running (pid file {self._pid_file(c)})")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return Command([a.decode() for a in argv], os.readlink(f"/proc/{pid}/cwd"))

    def stop(self, *components: Component, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the components (SIGKILL by default: a crash, nothing flushed) and wait until gone."""
        for c in components:
            pid = self.pid(c)
            if pid is not None and _alive(pid):
                os.kill(pid, sig)
                wait_for(lambda p=pid: not _alive(p), 30, f"{c} (pid {pid}) to exit")

    def start(self, *components: Component) -> None:
        """Start the components that are not running, in dependency order."""
        for c in Component:  # declaration order is dependency order
            pid = self.pid(c)
            if c in components and (pid is None or not _alive(pid)):
                self._launch(c)

    def revive(self) -> None:
        """Start every component that is not running (those that died of the outage too)."""
        self.start(*Component)

    def _launch(self, c: Component) -> None:
        cmd = self.commands[c]
        with (self.dir / "logs" / f"{c}.log").open("ab") as log:
            proc = subprocess.Popen(
                cmd.argv,
                cwd=cmd.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this test session, as kwokctl's processes do
            )
        self._pid_file(c).write_text(str(proc.pid))

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait until the API server answers /readyz; returns when that happened (time.monotonic)."""
        kubectl = Path(self.cluster.bin_dir) / "kubectl"

        def ready() -> bool:
            r = subprocess.run(
                [
                    str(kubectl),
                    "--kubeconfig",
                    self.cluster.kubeconfig,
                    "--request-timeout=2s",
                    "get",
                    "--raw",
                    "/readyz",
                ],
                capture_output=True,
                check=False,
            )
            return r.returncode == 0

        wait_for(ready, timeout, f"API server of {self.name} ready again (log: {self.dir / 'logs'})", interval=0.2)
        return time.monotonic()
