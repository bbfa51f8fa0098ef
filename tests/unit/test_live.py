"""The live commands' pure part (live.py): exit codes, ETAs, rates, rows, the next retry's attempt
and which pod `apwa logs` reads. Tables of named cases."""

from __future__ import annotations

from typing import Any

import pytest
from apwa.common.times import format_iso
from apwa.live import RateMeter, WatchExit, duration, eta, get_row, latest_pod, next_attempt, outcome

NOW = 1_800_000_000.0


def wl(phase: str | None = None, *, done: bool = False, retry: dict[str, Any] | None = None, **counts: int) -> dict:
    status: dict[str, Any] = {"counts": {"total": 10, **counts}, "startTime": format_iso(NOW - 100)}
    if phase:
        status["phase"] = phase
    if done:
        status["completionTime"] = format_iso(NOW - 1)
    spec: dict[str, Any] = {"retry": retry} if retry else {}
    return {"metadata": {"name": "w", "creationTimestamp": format_iso(NOW - 125)}, "spec": spec, "status": status}


@pytest.mark.parametrize(
    ("body", "want"),
    [
        pytest.param(wl("Running"), None, id="running"),
        pytest.param(wl("Succeeded", done=True), WatchExit.SUCCEEDED, id="succeeded"),
        pytest.param(wl("Failed", done=True), WatchExit.FAILED, id="failed"),
        pytest.param(wl("Failed"), None, id="failed-but-jobs-still-finishing"),
        pytest.param({"metadata": {}}, None, id="no-status-yet"),
        pytest.param(wl("Failed", done=True, retry={"attempt": 1}), None, id="failed-with-a-retry-not-accepted-yet"),
    ],
)
def test_outcome(body: dict, want: WatchExit | None) -> None:
    assert outcome(body) == want


def test_exit_codes_are_distinct() -> None:
    assert len({int(c) for c in WatchExit}) == len(WatchExit)


@pytest.mark.parametrize(
    ("remaining", "rate", "want"),
    [
        pytest.param(0, None, 0.0, id="nothing-left"),
        pytest.param(10, None, None, id="unknown-rate"),
        pytest.param(10, 0.0, None, id="stalled"),
        pytest.param(10, 2.0, 5.0, id="steady"),
    ],
)
def test_eta(remaining: int, rate: float | None, want: float | None) -> None:
    assert eta(remaining, rate) == want


@pytest.mark.parametrize(
    ("seconds", "want"),
    [(None, "-"), (-3, "0s"), (45, "45s"), (192, "3m12s"), (7500, "2h5m"), (3 * 86400 + 4 * 3600, "3d4h")],
    ids=["unknown", "negative", "seconds", "minutes", "hours", "days"],
)
def test_duration(seconds: float | None, want: str) -> None:
    assert duration(seconds) == want


@pytest.mark.parametrize(
    ("body", "row"),
    [
        pytest.param(
            wl("Running", succeeded=4, failed=1, active=2),
            ("w", "Running", "4/10", "1", "2", "1m40s", "2m05s"),  # 5 finished in 100 s: 5 more take 100 s
            id="running-with-eta",
        ),
        pytest.param(wl("Pending"), ("w", "Pending", "0/10", "0", "0", "-", "2m05s"), id="nothing-finished-no-eta"),
        pytest.param(
            wl("Succeeded", done=True, succeeded=10),
            ("w", "Succeeded", "10/10", "0", "0", "-", "2m05s"),
            id="finished-no-eta",
        ),
    ],
)
def test_get_row(body: dict, row: tuple[str, ...]) -> None:
    assert get_row(body, NOW) == row


def test_rate_meter_uses_the_recent_window_and_restarts_after_a_retry() -> None:
    m = RateMeter(window=10)
    for t, f in [(0, 0), (5, 50), (20, 60), (25, 70)]:
        m.add(t, f)
    assert m.rate() == pytest.approx((70 - 50) / (25 - 5))  # (0, 0) left the window
    m.add(26, 30)  # a retry un-counted 40 failures
    m.add(28, 34)
    assert m.rate() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("spec_attempt", "observed", "finished", "want"),
    [
        pytest.param(None, None, True, 1, id="first-retry"),
        pytest.param(None, None, False, 1, id="first-retry-of-a-running-workload"),
        pytest.param(1, 1, True, 2, id="after-an-accepted-retry-finished"),
        pytest.param(1, 1, False, None, id="accepted-retry-still-running-asks-nothing"),
        pytest.param(2, 1, True, 2, id="request-pending-asks-the-same-again"),
        pytest.param(None, 3, True, 4, id="spec-cleared-by-gitops"),
    ],
)
def test_next_attempt(spec_attempt: int | None, observed: int | None, finished: bool, want: int | None) -> None:
    body = wl("Failed", done=finished, retry={"attempt": spec_attempt} if spec_attempt else None)
    if observed:
        body["status"]["retry"] = {"attempt": observed}
    assert next_attempt(body) == want


def pod(name: str, attempt: int | None, created: str) -> dict:
    labels = {} if attempt is None else {"apwa.dev/attempt": str(attempt)}
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created}}


PODS = [
    pod("w-1-a", None, "2026-01-01T00:00:00Z"),
    pod("w-1-b", 0, "2026-01-01T00:01:00Z"),
    pod("w-1-r1-a", 1, "2026-01-01T00:02:00Z"),
    pod("w-1-r1-b", 1, "2026-01-01T00:03:00Z"),
]


@pytest.mark.parametrize(
    ("pods", "attempt", "want"),
    [
        pytest.param(PODS, None, "w-1-r1-b", id="latest-attempt-last-pod"),
        pytest.param(PODS, 0, "w-1-b", id="first-run-last-pod"),
        pytest.param(PODS[:1], None, "w-1-a", id="unlabelled-is-attempt-0"),
        pytest.param(PODS, 5, None, id="no-such-attempt"),
        pytest.param([], None, None, id="no-pod"),
    ],
)
def test_latest_pod(pods: list[dict], attempt: int | None, want: str | None) -> None:
    got = latest_pod(pods, attempt)
    assert (got["metadata"]["name"] if got else None) == want
