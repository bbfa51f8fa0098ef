"""Shards: `count` subtasks, each told its shard index and the shard count."""

from collections.abc import Iterator
from typing import Any

from apwa.api.models import ShardsSpec


def expand(spec: ShardsSpec) -> Iterator[dict[str, Any]]:
    for i in range(spec.count):
        yield {"shard": i, "count": spec.count}
