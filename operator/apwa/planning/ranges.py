"""Integer ranges: start, start+step, ... < end."""

from collections.abc import Iterator

from apwa.api.models import RangeSpec


def count(spec: RangeSpec) -> int:
    return len(range(spec.start, spec.end, spec.step))


def expand(spec: RangeSpec) -> Iterator[int]:
    yield from range(spec.start, spec.end, spec.step)
