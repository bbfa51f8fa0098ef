"""Wording shared by every layer, so one problem reads the same wherever it is found."""

from __future__ import annotations

from collections.abc import Iterable


def no_key(kind: str, name: str, key: str, have: Iterable[str]) -> str:
    """A ConfigMap or Secret lacks the key a field names: say which keys it does have."""
    keys = ", ".join(sorted(have)) or "none"
    return f"{kind} {name!r} has no key {key!r} (has: {keys})"
