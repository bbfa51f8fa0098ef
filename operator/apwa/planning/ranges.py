"""Integer ranges: start, start+step, ... < end."""

from collections.abc import Iterator

from apwa.api.models import RangeSpec


def count(spec: RangeSpec) -> int:
    # Arithmetic, not len(range(...)): len raises OverflowError past sys.maxsize values, which an
    # int64 range (what the CRD admits) can reach.
    return max(0, -(-(spec.end - spec.start) // spec.step))


def expand(spec: RangeSpec) -> Iterator[int]:
    yield from range(spec.start, spec.end, spec.step)
