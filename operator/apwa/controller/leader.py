"""Leader election on a coordination.k8s.io Lease: one replica acts, the others wait to take over.

Why a Lease and not kopf's peering: peering makes replicas pause while a higher-priority peer is
alive, but it is a presence protocol (peers announce themselves in a custom resource every few
seconds and each decides alone), not mutual exclusion: during a rollout two peers can act at once
for a moment, and it needs kopf's own CRDs. A Lease is the API server's compare-and-swap on one
object (every write carries the resourceVersion it read), the same mechanism kube-controller-manager
and client-go use: at most one holder whose renewals succeed.

The rules (client-go's leaderelection, restated):
- a Lease is taken when it has no holder, or when its record has not changed for
  leaseDurationSeconds *as observed here* (the local monotonic clock: never compare clocks of two
  machines), by a PUT with the read resourceVersion; a 409 means someone else wrote first;
- the holder renews every `retry` seconds; when it could not renew for `renew_deadline` seconds
  (less than the lease duration), it stops acting at once: the process exits, so nothing it had in
  flight can write after another replica took over (the kubelet restarts it, as a standby);
- on a clean stop the holder gives the Lease up (holder cleared, duration 1 s), so a rolling update
  hands over in about a second rather than a lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from apwa import metrics
from apwa.common.times import format_iso
from apwa.kube.client import ApiError, Kube

log = logging.getLogger("apwa.leader")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


@dataclass(frozen=True)
class Timings:
    """client-go's defaults: take over at most ~lease+retry after the leader died."""

    lease: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.lease:
            raise ValueError("leader election needs 0 < retry < renew deadline < lease duration")


class LostLeadership(Exception):
    pass


class Leadership:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, timings: Timings | None = None) -> None:
        self.kube, self.identity = kube, identity
        self.path = LEASES.format(ns=namespace) + f"/{name}"
        self.collection, self.name = LEASES.format(ns=namespace), name
        self.t = timings or Timings()
        self.observed: dict[str, Any] | None = None  # the Lease's spec as last read
        self.observed_at = 0.0  # monotonic time it was last seen to change
        self.renewed_at = 0.0

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        log.info("waiting to lead (Lease %s as %s)", self.path, self.identity)
        # A poll: the Lease lives in the API server, and a watch would not make taking it faster
        # (an expiry is seen by time passing, not by an event).
        while True:
            if await self.try_acquire_or_renew():
                break
            await asyncio.sleep(self.t.retry * random.uniform(1.0, 1.2))
        metrics.LEADER.set(1)
        log.info("leading (Lease %s)", self.path)

    async def keep(self) -> None:
        """Renew until renewal fails for renew_deadline: then raise LostLeadership."""
        while True:
            await asyncio.sleep(self.t.retry)
            try:
                ok = await self.try_acquire_or_renew()
            except (ApiError, OSError) as e:
                log.warning("renewing the Lease failed: %s", e)
                ok = False
            if not ok and time.monotonic() - self.renewed_at > self.t.renew_deadline:
                metrics.LEADER.set(0)
                raise LostLeadership(f"could not renew Lease {self.path} for {self.t.renew_deadline:g} s")

    async def release(self) -> None:
        """Give the Lease up (a clean stop): the next replica takes over without waiting it out."""
        metrics.LEADER.set(0)
        lease = await self.kube.get(self.path)
        if not lease or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        now = format_iso(time.time(), micro=True)
        lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now}
        status, _ = await self.kube.put(self.path, lease)
        log.info("gave up the Lease %s (%s)", self.path, "done" if status < 300 else f"HTTP {status}")

    async def try_acquire_or_renew(self) -> bool:
        now_iso = format_iso(time.time(), micro=True)
        lease = await self.kube.get(self.path)
        if lease is None:
            return await self._create(now_iso)
        spec = lease.get("spec") or {}
        if spec != self.observed:
            self.observed, self.observed_at = spec, time.monotonic()
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.t.lease)
        if holder and holder != self.identity and time.monotonic() < self.observed_at + duration:
            return False  # held, and renewed within its duration as far as this replica can see
        mine = holder == self.identity
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.t.lease),
            "renewTime": now_iso,
            "acquireTime": spec.get("acquireTime") if mine else now_iso,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        }
        status, written = await self.kube.put(self.path, lease)  # carries the read resourceVersion
        if status >= 300:
            return False  # 409: another replica wrote first; 404: deleted meanwhile
        return self._renewed(written)

    async def _create(self, now_iso: str) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.t.lease),
                "acquireTime": now_iso,
                "renewTime": now_iso,
                "leaseTransitions": 0,
            },
        }
        created, written = await self.kube.create(self.collection, body)
        return created and self._renewed(written)

    def _renewed(self, lease: dict[str, Any]) -> bool:
        self.observed, self.observed_at = lease.get("spec") or {}, time.monotonic()
        self.renewed_at = self.observed_at
        return True
