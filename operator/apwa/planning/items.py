"""Static items: each JSON value is one subtask, in list order."""

from collections.abc import Iterator
from typing import Any


def expand(items: list[Any]) -> Iterator[Any]:
    yield from items
