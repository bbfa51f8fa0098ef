"""Deterministic child names: valid DNS-1123 labels of at most 63 characters.

A workload name is a DNS subdomain (up to 253 characters, dots allowed); children need labels.
When the name has to be shortened or changed, a hash of the full name keeps it unique.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def child_name(workload: str, suffix: str) -> str:
    """`<workload>-<suffix>`, shortened with a hash when it would not be a valid label."""
    tail = f"-{suffix}"
    base = _INVALID.sub("-", workload.lower()).strip("-") or "w"
    if base == workload and len(base) + len(tail) <= MAX_LABEL:
        return base + tail
    room = MAX_LABEL - len(tail) - 9  # 9 = "-" + 8 hex digits
    return f"{base[:room].rstrip('-')}-{_digest(workload)}{tail}"


def attempt_suffix(base: str, attempt: int) -> str:
    """Attempt 0 keeps the name it always had; a retry's children get `-r<attempt>`."""
    return base if attempt == 0 else f"{base}-r{attempt}"


def job_name(workload: str, index: int, attempt: int = 0) -> str:
    return child_name(workload, attempt_suffix(str(index), attempt))


def label_value(name: str) -> str:
    """A label value (<= 63 characters) that stands for `name`."""
    if len(name) <= MAX_LABEL:
        return name
    return f"{name[: MAX_LABEL - 9].rstrip('-.')}-{_digest(name)}"
