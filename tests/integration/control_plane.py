"""Stopping and starting the local control plane's components (kwokctl's binary runtime).

kwokctl starts each component as a detached process and records its pid in
``$KWOK_WORKDIR/clusters/<name>/pids/<component>.pid``; its log is ``logs/<component>.log``. kwokctl
itself can only stop or start the whole cluster, so a fault test that restarts one component reads
the component's command line from /proc, stops it, and starts the same command again (detached,
appending to the same log, its pid written back so that ``hack/cluster.sh down`` still stops it).

While a component is stopped its ports are held by this process: kwokctl gives a cluster created
meanwhile the first free ports, and a restarted kube-apiserver would then reach another cluster's
etcd (it happened: an outage test's API server served a neighbour's data). Connections to a held
port are accepted and reset at once, as a dead process's would be refused. After every start the
cluster's identity (the uid of namespace kube-system) is checked too.

The kube-controller-manager and kube-scheduler run with leader election: an API server down longer
than their renew deadline (10 s) makes them exit. ``start`` therefore also starts any component
that died meanwhile, as a kubelet would restart a static pod.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
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


class PortHold:
    """Listens on a port and resets every connection, until released."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the dead one's TIME_WAITs
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._reset_all, daemon=True)
        self.thread.start()

    def _reset_all(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            conn.close()

    def release(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def listening_ports(pid: int) -> list[int]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        local = re.search(r":(\d+)\s", line)  # the first address:port is the local one
        if f"pid={pid}," in line and local:
            ports.add(int(local.group(1)))
    return sorted(ports)


class ControlPlane:
    def __init__(self, cluster: Cluster, name: str | None = None) -> None:
        self.cluster = cluster
        self.name = name or os.environ.get("APWA_CLUSTER_NAME", "apwa")
        self.dir = CACHE / "kwok" / "clusters" / self.name
        # Read once, while everything runs: a component that dies later is started from this.
        self.commands = {c: self._command(c) for c in Component}
        self.ports = {c: listening_ports(self.pid(c) or 0) for c in Component}
        self.held: dict[Component, list[PortHold]] = {}
        self.identity = self._identity()

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
            if c not in self.held:
                self.held[c] = [wait_for(lambda p=p: _hold(p), 30, f"port {p} of {c} to hold") for p in self.ports[c]]

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
        for hold in self.held.pop(c, []):
            hold.release()
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

    @contextlib.contextmanager
    def apiserver_flags(self, *flags: str) -> Iterator[None]:
        """The API server restarted with extra flags for the block, then with its own again."""
        own = self.commands[Component.APISERVER]
        self.stop(Component.APISERVER)
        self.commands[Component.APISERVER] = replace(own, argv=[*own.argv, *flags])
        try:
            self.start(Component.APISERVER)
            self.wait_ready()
            yield
        finally:
            self.stop(Component.APISERVER)
            self.commands[Component.APISERVER] = own
            self.revive()
            self.wait_ready()

    def etcd_endpoint(self) -> str:
        """etcd's client URL, from its command line (kwokctl's etcd serves plain HTTP on loopback)."""
        flag = "--advertise-client-urls="
        urls = next(a for a in self.commands[Component.ETCD].argv if a.startswith(flag))
        return urls.removeprefix(flag).split(",")[0]

    def etcd_revision(self, etcdctl: Path) -> int:
        out = self._etcdctl(etcdctl, "endpoint", "status", "-w", "json")
        return int(json.loads(out)[0]["Status"]["header"]["revision"])

    def compact(self, etcdctl: Path) -> int:
        """Compact etcd's history up to its current revision (as its periodic compaction does,
        only now); returns that revision: watches resumed before it are answered 410 Gone."""
        rev = self.etcd_revision(etcdctl)
        self._etcdctl(etcdctl, "compact", str(rev))
        return rev

    def _etcdctl(self, etcdctl: Path, *args: str) -> str:
        cmd = [str(etcdctl), f"--endpoints={self.etcd_endpoint()}", "--command-timeout=10s", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout

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
        if self._identity() != self.identity:
            self.stop(Component.APISERVER)  # it serves another cluster's store: never leave it running
            raise AssertionError(f"the restarted API server of {self.name} serves another cluster's etcd")
        return time.monotonic()

    def _identity(self) -> str:
        kubectl = Path(self.cluster.bin_dir) / "kubectl"
        return subprocess.run(
            [
                str(kubectl),
                "--kubeconfig",
                self.cluster.kubeconfig,
                "--request-timeout=5s",
                "get",
                "namespace",
                "kube-system",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout


def _hold(port: int) -> PortHold | None:
    try:
        return PortHold(port)
    except OSError:  # still held by the exiting process's socket
        return None
