"""Inputs from the store, the operator side: the objects under a prefix, listed once.

The listing (in key order; the prefix's sub-folders listed a few at a time, each paginated) is
grouped by apwa.planning.objects and stored like a planner's answer (controller/dynamic.py
`keep_plan`), before the first Job, and never listed again: later steps and later operators read
the stored plan. A plan too big for its ConfigMap (100,000 objects make a few MiB of keys) is
stored gzip-compressed as an object in the bucket, named by its sha256 (results/keys.py
`plan_object_key`), and the ConfigMap keeps a pointer {bucket, key, sha256, size}: the
ConfigMap's atomic creation still decides which plan it is.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from apwa.api.models import ParallelWorkloadSpec, StoreSpec
from apwa.controller.dynamic import PlanContext, keep_plan, plan_config_map_name
from apwa.controller.store import open_bucket, store_stall
from apwa.planning.base import PlanningError
from apwa.planning.objects import FIELD, Packer
from apwa.results.keys import plan_object_key
from apwa.store.s3 import Bucket, StoreError

log = logging.getLogger("apwa.inputs")
LIST_PAGE = 1000  # keys per listing request (S3's maximum)
FAN_OUT = 8  # sub-folders of the prefix listed at once


class _Buckets:
    """The workload's bucket, opened (Secret read, access checked) on first use only: a plan
    already stored in its ConfigMap needs no store at all."""

    def __init__(self, ctx: PlanContext, store: StoreSpec, root: str) -> None:
        self.ctx, self.store, self.root = ctx, store, root
        self._bucket: Bucket | None = None

    async def open(self) -> Bucket:
        if self._bucket is None:
            self._bucket = await open_bucket(self.ctx.kube, self.ctx.namespace, self.store, self.root)
        return self._bucket


class BucketOffload:
    """dynamic.Offload: a plan too big for its ConfigMap, as a content-addressed object."""

    def __init__(self, buckets: _Buckets) -> None:
        self.buckets = buckets

    async def put(self, payload: bytes) -> dict[str, Any]:
        bucket = await self.buckets.open()
        data = gzip.compress(payload, 6)
        digest = hashlib.sha256(data).hexdigest()
        key = plan_object_key(self.buckets.root, digest)
        try:
            await bucket.put(key, data)
        except StoreError as e:
            raise store_stall(e) from None
        return {"bucket": bucket.where.bucket, "key": key, "sha256": digest, "size": len(data)}

    async def get(self, pointer: dict[str, Any]) -> dict[str, Any]:
        bucket = await self.buckets.open()
        key = str(pointer.get("key"))
        try:
            data = await bucket.get(key)
        except StoreError as e:
            raise store_stall(e) from None
        again = f"; delete ConfigMap {plan_config_map_name(self.buckets.ctx.name)!r} to list the objects again"
        if data is None:
            raise PlanningError(FIELD, f"the stored plan object {key!r} is missing from the bucket{again}")
        if hashlib.sha256(data).hexdigest() != pointer.get("sha256"):
            raise PlanningError(FIELD, f"the stored plan object {key!r} does not match its checksum{again}")
        try:
            document = json.loads(gzip.decompress(data))
        except (ValueError, OSError, EOFError) as e:
            raise PlanningError(
                FIELD, f"the stored plan object {key!r} is unreadable ({type(e).__name__}){again}"
            ) from None
        if not isinstance(document, dict):
            raise PlanningError(FIELD, f"the stored plan object {key!r} is not a plan{again}")
        return document


async def every_object(bucket: Bucket, prefix: str, fan_out: int = FAN_OUT) -> AsyncIterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, in key order. One level of sub-folders is
    listed `fan_out` at a time (each paginated), so a prefix of many folders lists in a fraction
    of the round trips one after another would take. In order: a folder's keys sort together,
    right where the folder's name (with its '/') sorts among the objects directly under the prefix."""
    folders, direct = await bucket.folders(prefix)
    entries: list[tuple[str, int | None]] = sorted([*direct, *((f, None) for f in folders)])
    pending = deque(f for f, size in entries if size is None)
    listings: dict[str, asyncio.Task[list[tuple[str, int]]]] = {}

    async def listing(folder: str) -> list[tuple[str, int]]:
        return [found async for found in bucket.keys(folder, page=LIST_PAGE)]

    try:
        for key, size in entries:
            if size is not None:
                yield key, size
                continue
            while pending and len(listings) < fan_out:  # the next folders, in order, ahead of use
                folder = pending.popleft()
                listings[folder] = asyncio.create_task(listing(folder))
            for found in await listings.pop(key):
                yield found
    finally:
        for task in listings.values():
            task.cancel()


async def object_plan(ctx: PlanContext, spec: ParallelWorkloadSpec, root: str) -> list[Any]:
    """The workload's items: the stored plan's, else the listing's, stored first."""
    objects, store = spec.decomposition.objects, spec.store
    assert objects is not None and store is not None, "the model requires spec.store with objects"
    buckets = _Buckets(ctx, store, root)

    async def listing() -> tuple[dict[str, Any], list[Any]]:
        bucket = await buckets.open()
        where = bucket.where.describe()
        await ctx.report_planning(f"store (objects under {objects.prefix!r} in {where})")
        packer = Packer(objects, ctx.max_subtasks)
        started = time.perf_counter()
        try:
            async for key, size in every_object(bucket, objects.prefix):
                packer.add(key, size)
        except StoreError as e:
            raise store_stall(e) from None
        items = packer.finish(where)
        took = time.perf_counter() - started
        log.info(
            "workload %s/%s: %d objects (%d bytes) under %r listed in %.1fs: %d subtasks",
            ctx.namespace,
            ctx.name,
            packer.objects,
            packer.bytes,
            objects.prefix,
            took,
            len(items),
        )
        listed = {"prefix": objects.prefix, "count": packer.objects, "bytes": packer.bytes}
        return {"objects": listed}, items

    return await keep_plan(ctx, FIELD, listing, offload=BucketOffload(buckets))
