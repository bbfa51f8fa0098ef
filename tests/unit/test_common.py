"""The shared helpers: one backoff, one Retry-After reader, one time parser, one message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from apwa.common.messages import no_key
from apwa.common.retry import Backoff, retry_after
from apwa.common.times import format_iso, parse_iso

NOW = datetime(2027, 1, 15, 8, 0, 0, tzinfo=UTC)

RETRY_AFTER = [
    ("absent", None, 30.0, None),
    ("empty", "", 30.0, None),
    ("seconds", "2", 30.0, 2.0),
    ("fraction", "0.5", 30.0, 0.5),
    ("capped", "120", 30.0, 30.0),
    ("negative-is-now", "-3", 30.0, 0.0),
    ("http-date", "Fri, 15 Jan 2027 08:00:10 GMT", 60.0, 10.0),
    ("http-date-past", "Fri, 15 Jan 2027 07:00:00 GMT", 60.0, 0.0),
    ("http-date-capped", "Fri, 15 Jan 2027 09:00:00 GMT", 60.0, 60.0),
    ("garbage", "soon", 30.0, None),
]


@pytest.mark.parametrize(("value", "cap", "expected"), [pytest.param(*r[1:], id=r[0]) for r in RETRY_AFTER])
def test_retry_after(value: str | None, cap: float, expected: float | None) -> None:
    assert retry_after(value, cap=cap, now=NOW) == expected


BACKOFF = [
    # name, first, cap, jitter, rng value, expected waits
    ("doubles-low-jitter", 1.0, 100.0, (1.0, 2.0), 0.0, [1.0, 2.0, 4.0, 8.0]),
    ("doubles-high-jitter", 1.0, 100.0, (1.0, 2.0), 1.0, [2.0, 4.0, 8.0, 16.0]),
    ("capped", 1.0, 4.0, (1.0, 2.0), 0.0, [1.0, 2.0, 4.0, 4.0, 4.0]),
    ("centred-jitter", 0.5, 30.0, (0.5, 1.5), 0.5, [0.5, 1.0, 2.0]),
]


@pytest.mark.parametrize(("first", "cap", "jitter", "rng", "waits"), [pytest.param(*r[1:], id=r[0]) for r in BACKOFF])
def test_backoff(first: float, cap: float, jitter: tuple[float, float], rng: float, waits: list[float]) -> None:
    b = Backoff(first, cap, jitter=jitter, rng=lambda: rng)
    assert [b.next() for _ in waits] == waits


def test_backoff_reset() -> None:
    b = Backoff(1.0, 100.0, rng=lambda: 0.0)
    b.next(), b.next()
    b.reset()
    assert b.next() == 1.0


TIMES = [
    ("zulu", "2027-01-15T08:00:00Z", NOW.timestamp()),
    ("offset", "2027-01-15T09:00:00+01:00", NOW.timestamp()),
    ("fraction", "2027-01-15T08:00:00.5Z", NOW.timestamp() + 0.5),
    ("naive-is-utc", "2027-01-15T08:00:00", NOW.timestamp()),
    ("missing", None, None),
    ("empty", "", None),
    ("garbage", "yesterday", None),
]


@pytest.mark.parametrize(("text", "epoch"), [pytest.param(*r[1:], id=r[0]) for r in TIMES])
def test_parse_iso(text: str | None, epoch: float | None) -> None:
    assert parse_iso(text) == epoch


def test_format_iso_round_trips() -> None:
    assert format_iso(NOW.timestamp()) == "2027-01-15T08:00:00Z"
    assert parse_iso(format_iso(NOW.timestamp())) == NOW.timestamp()


@pytest.mark.parametrize(
    ("have", "listed"), [pytest.param({"b": 1, "a": 2}, "a, b", id="sorted"), pytest.param({}, "none", id="none")]
)
def test_no_key(have: dict[str, int], listed: str) -> None:
    assert no_key("Secret", "llm", "apiKey", have) == f"Secret 'llm' has no key 'apiKey' (has: {listed})"
