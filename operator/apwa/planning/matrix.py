"""Parameter matrix: the cartesian product of the axes, in written order (last axis fastest)."""

import itertools
import math
from collections.abc import Iterator
from typing import Any


def count(axes: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in axes.values())


def expand(axes: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        yield dict(zip(names, combo, strict=True))
