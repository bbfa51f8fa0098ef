"""Inputs from the store, the pure part: the objects under a prefix, in key order -> subtask items.

Every subtask's item has one shape, whatever the group size:

    {"keys": ["<full object key>", ...], "bytes": <their total size>}

Grouping is deterministic: objects in lexicographic key order (S3's listing order), packed
greedily; a subtask closes before an object would take it past `maxObjectsPerSubtask`,
`maxBytesPerSubtask` or MAX_KEYS_BYTES of keys (the item travels in the pod's environment, and
Linux refuses an environment string past 128 KiB). An object larger than `maxBytesPerSubtask`
gets a subtask of its own. Folder markers are not inputs: keys ending in "/", and empty objects
whose key is also a folder of other objects (obstore reports a marker "a/" as "a").

In the subtask's pod each object becomes a file under $APWA_INPUT_DIR named by `input_name`: the
key minus the prefix. Keys that can't be a safe relative path there (an empty, "." or ".." path
segment, a segment over 255 bytes) are refused at planning time, naming the key.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from apwa.api.models import ObjectsSpec
from apwa.planning.base import DEFAULT_MAX_SUBTASKS, PlanningError

FIELD = "spec.decomposition.objects"
# The keys of one item, as JSON, stay under this (APWA_ITEM is one environment string, and the
# Job carries it for the main containers and the fetch container: well under etcd's limit too).
MAX_KEYS_BYTES = 64 * 1024
MAX_NAME_SEGMENT = 255  # bytes: the usual file-name limit


def input_name(prefix: str, key: str) -> str:
    """Where object `key` lands under the input directory: its key relative to the prefix.
    Raises ValueError when that is not a safe relative path."""
    if not key.startswith(prefix):
        raise ValueError(f"key {key!r} is not under prefix {prefix!r}")
    name = key[len(prefix) :]
    if not name:
        raise ValueError(f"key {key!r} is the prefix itself, which leaves no file name")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(
                f"key {key!r} has an empty, '.' or '..' path segment after the prefix, which can't be a file name"
            )
        if "\0" in segment or len(segment.encode()) > MAX_NAME_SEGMENT:
            raise ValueError(f"key {key!r} has a path segment that can't be a file name (NUL, or over 255 bytes)")
    return name


class Packer:
    """Groups objects fed one at a time (a listing is consumed as it arrives)."""

    def __init__(self, spec: ObjectsSpec, max_subtasks: int = DEFAULT_MAX_SUBTASKS) -> None:
        self.spec = spec
        self.max_subtasks = max_subtasks
        self.items: list[dict[str, Any]] = []
        self.objects = 0
        self.bytes = 0
        self._keys: list[str] = []
        self._size = 0
        self._key_bytes = 0
        self._last: str | None = None
        # [key, size, keep?] from the first empty object whose fate is unknown on, in key order.
        self._held: deque[list[Any]] = deque()
        self._suspects: list[list[Any]] = []

    def add(self, key: str, size: int) -> None:
        if key.endswith("/"):
            return  # a folder marker, as listed by a client that keeps the '/'
        if self._last is not None and key <= self._last:
            raise PlanningError(
                FIELD, f"the store listed {key!r} after {self._last!r}: not in key order (a store bug?)"
            )
        self._last = key
        # An empty object may be a folder marker ("a/", which obstore reports as "a"): it waits,
        # with the keys after it, until a key shows whether there are objects in folder "a/".
        for suspect in self._suspects:
            if key >= suspect[0] + "/":
                suspect[2] = not key.startswith(suspect[0] + "/")
        self._suspects = [s for s in self._suspects if s[2] is None]
        entry = [key, size, None if size == 0 else True]
        self._held.append(entry)
        if size == 0:
            self._suspects.append(entry)
        self._release()

    def _release(self) -> None:
        while self._held and self._held[0][2] is not None:
            key, size, keep = self._held.popleft()
            if keep:
                self._pack(key, size)

    def _pack(self, key: str, size: int) -> None:
        try:
            input_name(self.spec.prefix, key)
        except ValueError as e:
            raise PlanningError(f"{FIELD}.prefix", f"{e}; rename the object or narrow the prefix") from None
        cost = len(json.dumps(key)) + 1
        if self._keys and self._full(size, cost):
            self._close()
        self._keys.append(key)
        self._size += size
        self._key_bytes += cost
        self.objects += 1
        self.bytes += size

    def _full(self, size: int, cost: int) -> bool:
        limit = self.spec.max_bytes_per_subtask
        return (
            len(self._keys) >= self.spec.max_objects_per_subtask
            or (limit is not None and self._size + size > limit)
            or self._key_bytes + cost > MAX_KEYS_BYTES
        )

    def _close(self) -> None:
        if len(self.items) >= self.max_subtasks:
            raise PlanningError(
                FIELD,
                f"the objects under prefix {self.spec.prefix!r} make more than the maximum of {self.max_subtasks} "
                "subtasks; raise maxObjectsPerSubtask or maxBytesPerSubtask, or narrow the prefix",
            )
        self.items.append({"keys": self._keys, "bytes": self._size})
        self._keys, self._size, self._key_bytes = [], 0, 0

    def finish(self, where: str = "the bucket") -> list[dict[str, Any]]:
        """The items; PlanningError when there were no objects at all."""
        for suspect in self._suspects:  # nothing in their folders: plain empty objects
            suspect[2] = True
        self._suspects = []
        self._release()
        if self._keys:
            self._close()
        if not self.items:
            raise PlanningError(
                f"{FIELD}.prefix",
                f"no objects under prefix {self.spec.prefix!r} in {where}; upload the inputs first or fix the prefix",
            )
        return self.items


def group(
    objects: Iterable[tuple[str, int]], spec: ObjectsSpec, *, max_subtasks: int = DEFAULT_MAX_SUBTASKS
) -> list[dict[str, Any]]:
    """The items of `objects` ((key, size) in key order), grouped as the module docstring says."""
    packer = Packer(spec, max_subtasks)
    for key, size in objects:
        packer.add(key, size)
    return packer.finish()
