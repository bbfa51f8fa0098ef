"""Kubernetes time stamps: the one parser and the one formatter.

The API server writes RFC 3339 in UTC with a trailing "Z" ("2026-11-26T14:12:25Z"); Events,
conditions, creation and completion times all go through these two functions.
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_iso(ts: str | None) -> float | None:
    """Epoch seconds of a Kubernetes time stamp; None when missing or unreadable."""
    if not ts:
        return None
    try:
        parsed = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:  # the API server always says UTC; a bare stamp means the same
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def format_iso(epoch: float, *, micro: bool = False) -> str:
    """The stamp Kubernetes writes (seconds precision, UTC, "Z"); `micro`: a MicroTime (Leases'
    renewTime and acquireTime), with microseconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")
