"""Readiness and liveness decisions (controller/vitals.py), kopf's never-ending backoffs, and the
fault points' parsing: the pure parts, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from apwa.controller import faultpoints
from apwa.controller.handlers import RetryForever
from apwa.controller.vitals import WATCH_MAX_BACKOFF, Vitals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vitals(*watches: str, timeout: float = 10.0) -> tuple[Vitals, Clock]:
    clock = Clock()
    v = Vitals(clock)
    v.serving = True
    for w in watches:
        v.watch(w, timeout)
    return v, clock


@pytest.mark.parametrize(
    ("connected", "serving", "want_ready"),
    [
        pytest.param({"jobs": True, "pods": True}, True, True, id="all-connected"),
        pytest.param({"jobs": True, "pods": False}, True, False, id="one-disconnected"),
        pytest.param({"jobs": True, "pods": True}, False, False, id="kopf-not-running"),
        pytest.param({}, True, False, id="no-watch-yet"),
    ],
)
def test_readiness(connected: dict[str, bool], serving: bool, want_ready: bool) -> None:
    v, _ = vitals(*connected)
    v.serving = serving
    for name, up in connected.items():
        v.connected(name, up)
    assert (not v.not_ready()) is want_ready


def test_a_standby_replica_is_ready_without_watches() -> None:
    v, _ = vitals()
    v.serving = False
    v.standby = True
    assert not v.not_ready() and not v.not_live()


def test_a_disconnected_watch_is_not_a_liveness_failure() -> None:
    v, clock = vitals("jobs")
    v.connected("jobs", False)
    for _ in range(100):  # retrying for a long outage: a sign of life per attempt
        clock.now += WATCH_MAX_BACKOFF
        v.connected("jobs", False)
    assert v.not_ready() and not v.not_live()


@pytest.mark.parametrize(
    ("silent_for", "live"),
    [
        pytest.param(2 * 10 + WATCH_MAX_BACKOFF, True, id="at-the-limit"),
        pytest.param(2 * 10 + WATCH_MAX_BACKOFF + 1, False, id="past-it"),
    ],
)
def test_a_silent_watch_loop_fails_liveness(silent_for: float, live: bool) -> None:
    v, clock = vitals("jobs", timeout=10)
    v.connected("jobs", True)
    clock.now += silent_for
    assert (not v.not_live()) is live


@pytest.mark.parametrize(
    ("running_for", "live"),
    [pytest.param(5.0, True, id="short-step"), pytest.param(901.0, False, id="stuck-step")],
)
def test_a_stuck_step_fails_liveness(running_for: float, live: bool) -> None:
    v, clock = vitals()
    v.step_started("ns/w")
    clock.now += running_for
    assert (not v.not_live()) is live
    v.step_ended("ns/w")
    assert not v.not_live()


def test_an_ended_loop_fails_liveness_until_stopped() -> None:
    v, _ = vitals()
    v.loop_ended("ns/w", "RuntimeError('bug')")
    assert v.not_live() == ["workload ns/w: its loop ended: RuntimeError('bug')"]
    v.loop_stopped("ns/w")
    assert not v.not_live()


def test_kopf_backoffs_never_run_out_and_restart_for_each_request() -> None:
    backoffs = RetryForever((1, 2, 5), 10)
    assert list(itertools.islice(backoffs, 6)) == [1, 2, 5, 10, 10, 10]
    assert list(itertools.islice(backoffs, 2)) == [1, 2]  # a fresh iteration for the next request


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param("", {}, id="off"),
        pytest.param("job-created:3", {faultpoints.Point.JOB_CREATED: 3}, id="one"),
        pytest.param("step, watch-event:2", {faultpoints.Point.STEP: 1, faultpoints.Point.WATCH_EVENT: 2}, id="two"),
    ],
)
def test_fault_points_parse(value: str, want: dict[faultpoints.Point, int]) -> None:
    assert faultpoints.parse(value) == want


@pytest.mark.parametrize("value", ["nowhere:1", "job-created:x"], ids=["unknown-point", "bad-count"])
def test_fault_points_reject_what_they_cannot_do(value: str) -> None:
    with pytest.raises(ValueError, match="APWA_FAULT entry"):
        faultpoints.parse(value)


@pytest.mark.parametrize(
    ("up", "want_current"),
    [
        pytest.param({"/api/v1/namespaces/a/pods": True, "/api/v1/namespaces/b/pods": True}, True, id="all-up"),
        pytest.param({"/api/v1/namespaces/a/pods": True, "/api/v1/namespaces/b/pods": False}, False, id="one-down"),
        pytest.param({"/apis/batch/v1/jobs": True}, False, id="no-pods-watch"),
    ],
)
def test_the_pods_view_is_current_only_while_every_pods_watch_is_up(up: dict[str, bool], want_current: bool) -> None:
    v, clock = vitals(*up)
    for name, connected in up.items():
        v.connected(name, connected)
    clock.now += 5
    since = v.current_since("pods")
    assert (since is not None) is want_current
