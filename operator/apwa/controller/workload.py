"""One reconcile loop per ParallelWorkload.

The loop owns everything about its workload: the plan, the in-memory index of its Jobs and Pods
(fed by the shared watches), the durable result store, and the status. It wakes on any event
for the workload or its children, does one step, and writes the status at most once per
`status_interval`, however many events arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from apwa import API_VERSION, KIND, PLURAL, metrics
from apwa.api.models import ParallelWorkloadSpec
from apwa.controller.children import JobState, PodResult
from apwa.controller.store import KEY, ResultStore, config_map_body
from apwa.kube.client import ApiError, Kube, ns_path
from apwa.manifest import format_validation_error
from apwa.planning import DEFAULT_MAX_SUBTASKS, PlanningError, Subtask, plan
from apwa.rendering import (
    LABEL_ROLE,
    Owner,
    RenderError,
    child_name,
    render_job,
    render_network_policy,
    render_reduce_job,
)
from apwa.results import Aggregate, ResultTruncated, SubtaskOutcome, decode_result
from apwa.status import FINISHED, build, now_iso

log = logging.getLogger("apwa.workload")
# A finished Job whose pod we have not seen yet: wait this long for the pod event before
# recording the outcome without the pod's termination message.
POD_GRACE_SECONDS = 15.0
RESYNC_SECONDS = 30.0
# Job creations in flight per workload (the client bounds requests in flight overall).
MAX_CREATING = 128
# Steps scan the workload's Jobs; at thousands of child events per second one step per event
# would spend the CPU the API server needs. Events arriving within this interval share a step.
MIN_STEP_INTERVAL = 0.1


@dataclass
class Settings:
    status_interval: float = 1.0
    max_subtasks: int = DEFAULT_MAX_SUBTASKS
    metrics_port: int = 8080
    namespaces: list[str] = field(default_factory=list)


class Stalled(Exception):
    """The workload can't progress until something changes; the message says what."""

    def __init__(self, reason: str, message: str, retry: float = 30.0) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry = reason, message, retry


class WorkloadRunner:
    def __init__(self, kube: Kube, body: dict[str, Any], settings: Settings) -> None:
        meta = body["metadata"]
        self.kube = kube
        self.settings = settings
        self.body = body
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.wake = asyncio.Event()
        self.jobs: dict[int, JobState] = {}
        self.pods: dict[int, PodResult] = {}
        self.reduce_job: JobState | None = None
        self.reduce_pod: PodResult | None = None
        self.subtasks: list[Subtask] | None = None
        self.agg: Aggregate | None = None
        self.store: ResultStore | None = None
        self.next_index = 0
        self.seeded = False
        self.netpol_done = False
        self.written: dict[str, Any] | None = None
        self.last_write = 0.0
        self.stall_retry = 5.0
        self.finished_reported = False
        self.task: asyncio.Task[None] | None = None
        self.creating: set[int] = set()
        self.create_tasks: set[asyncio.Task[None]] = set()
        self.create_errors: list[BaseException] = []

    # ---- events from the shared watches ------------------------------------------------------
    def on_workload(self, body: dict[str, Any]) -> None:
        self.body = body
        self.wake.set()

    def on_job(self, event_type: str, job: dict[str, Any]) -> None:
        labels = job["metadata"].get("labels") or {}
        role = labels.get(LABEL_ROLE)
        if role == "reduce":
            self.reduce_job = None if event_type == "DELETED" else JobState.from_body(job)
        elif role == "subtask":
            index = int(labels["apwa.dev/index"])
            if self.agg and index in self.agg.outcomes:
                self.jobs.pop(index, None)
                return
            if event_type == "DELETED":
                # Deleted before its outcome was stored: it will be created again.
                self.jobs.pop(index, None)
                self.next_index = min(self.next_index, index)
            else:
                state = JobState.from_body(job)
                old = self.jobs.get(index)
                if state.finished and not (old and old.finished) and state.finished_at:
                    metrics.WATCH_LAG.observe(max(time.time() - state.finished_at, 0.0))
                self.jobs[index] = state
        self.wake.set()

    def forget_jobs_not_in(self, uids: set[str]) -> None:
        gone = [i for i, j in self.jobs.items() if j.uid and j.uid not in uids]
        for i in gone:
            del self.jobs[i]
            self.next_index = min(self.next_index, i)
        if gone:
            self.wake.set()

    def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        if event_type == "DELETED":
            return  # the last state seen stays: a deleted pod's message is still its result
        result = PodResult.from_body(pod)
        if result is None:
            return
        labels = pod["metadata"].get("labels") or {}
        if labels.get(LABEL_ROLE) == "reduce":
            if not (self.reduce_pod and self.reduce_pod.phase == "Succeeded"):
                self.reduce_pod = result
        else:
            index = int(labels["apwa.dev/index"])
            if self.agg and index in self.agg.outcomes:
                return
            old = self.pods.get(index)
            if not (old and old.phase == "Succeeded"):
                self.pods[index] = result
        self.wake.set()

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            for task in self.create_tasks:
                task.cancel()

    async def _loop(self) -> None:
        delay = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            await asyncio.sleep(MIN_STEP_INTERVAL)  # rate limit, not synchronisation: see above
            self.wake.clear()
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Stalled as e:
                delay = await self._stalled(e)
            except ApiError as e:
                # Already retried with backoff inside the client; one line is enough here.
                log.warning("workload %s/%s: %s; retrying", self.namespace, self.name, e)
                delay = 5.0
            except Exception:
                log.exception("workload %s/%s: step failed; retrying", self.namespace, self.name)
                delay = 5.0

    @property
    def owner(self) -> Owner:
        meta = self.body["metadata"]
        return Owner(self.name, self.namespace, self.uid, meta.get("labels") or {})

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")

    def _path(self, plural: str, group_version: str, name: str | None = None, sub: str | None = None) -> str:
        return ns_path(group_version, self.namespace, plural, name, sub)

    async def step(self) -> float:
        spec = self._spec()
        status = self.body.get("status") or {}
        if status.get("phase") in FINISHED and status.get("completionTime"):
            # Finished (maybe before this operator started): nothing runs any more.
            return await self._finished_housekeeping(spec, status)
        if self.subtasks is None:
            await self._plan(spec)
        assert self.subtasks is not None and self.agg is not None and self.store is not None
        if not self.seeded:
            await self._seed()
        if not self.netpol_done:
            await self.kube.create(
                self._path("networkpolicies", "networking.k8s.io/v1"),
                render_network_policy(self.owner, spec.isolation_or_default),
            )
            self.netpol_done = True
        retry = await self._collect()
        if self.store.dirty:
            await self.store.flush()
            await self._release_recorded(spec)
        total = len(self.subtasks)
        allowed = spec.failure.allowed(total)
        failing = self.agg.failed > allowed
        active = [i for i, j in self.jobs.items() if not j.finished]
        await self._apply_suspend(spec, active)
        if not spec.suspend and not failing:
            await self._create(spec, len(active))
            active = [i for i, j in self.jobs.items() if not j.finished]
        return min(retry, await self._report(spec, total, allowed, failing, len(active)))

    def _spec(self) -> ParallelWorkloadSpec:
        try:
            return ParallelWorkloadSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as e:
            problems = "; ".join(format_validation_error(e, "spec"))
            raise Stalled("InvalidSpec", f"the spec is invalid: {problems}", retry=300) from None

    async def _plan(self, spec: ParallelWorkloadSpec) -> None:
        data: Any = None
        d = spec.decomposition
        try:
            if d.config_map_ref is not None:
                data = await self._config_map_data(d.config_map_ref.name, d.config_map_ref.key)
            elif d.planner is not None:
                from apwa.controller.dynamic import stored_plan

                data = await stored_plan(self, spec)
            subtasks = plan(spec, data=data, max_subtasks=self.settings.max_subtasks)
            # A template or placeholder problem shows now, not halfway through the run.
            seen: set[str] = set()
            for s in subtasks:
                if s.template not in seen:
                    seen.add(s.template)
                    render_job(self.owner, spec, s, len(subtasks))
        except PlanningError as e:
            raise Stalled("PlanningFailed", str(e)) from None
        except RenderError as e:
            raise Stalled("InvalidTemplate", str(e), retry=300) from None
        self.subtasks = subtasks
        self.agg = Aggregate(total=len(subtasks))
        self.store = ResultStore(self.kube, self.owner, len(subtasks))
        self.stall_retry = 5.0
        await self._event("Normal", "Planned", f"decomposed into {len(subtasks)} subtasks")

    async def _config_map_data(self, name: str, key: str) -> str:
        cm = await self.kube.get(self._path("configmaps", "v1", name))
        field = "spec.decomposition.configMapRef"
        if cm is None:
            raise PlanningError(f"{field}.name", f"ConfigMap {name!r} not found in namespace {self.namespace!r}")
        data = cm.get("data") or {}
        if key not in data:
            have = ", ".join(sorted(data)) or "none"
            raise PlanningError(f"{field}.key", f"ConfigMap {name!r} has no key {key!r} (has: {have})")
        return data[key]

    async def _seed(self) -> None:
        """Rebuild what an earlier run of the operator knew: stored outcomes, existing children."""
        assert self.agg is not None and self.store is not None
        for outcome in await self.store.load():
            self.agg.record(outcome)
        selector = f"apwa.dev/workload-uid={self.uid}"
        async for job in self.kube.list(self._path("jobs", "batch/v1"), labelSelector=selector):
            labels = job["metadata"]["labels"]
            if labels.get(LABEL_ROLE) == "reduce":
                self.reduce_job = self.reduce_job or JobState.from_body(job)
                continue
            index = int(labels["apwa.dev/index"])
            if index not in self.agg.outcomes:
                self.jobs.setdefault(index, JobState.from_body(job))
        async for pod in self.kube.list(self._path("pods", "v1"), labelSelector=selector):
            result = PodResult.from_body(pod)
            if result is None:
                continue
            labels = pod["metadata"]["labels"]
            if labels.get(LABEL_ROLE) == "reduce":
                self.reduce_pod = self.reduce_pod or result
            else:
                index = int(labels["apwa.dev/index"])
                if index not in self.agg.outcomes and not (
                    index in self.pods and self.pods[index].phase == "Succeeded"
                ):
                    self.pods[index] = result
        self.seeded = True

    async def _collect(self) -> float:
        """Turn finished Jobs into outcomes. Returns how soon to look again for late pods."""
        assert self.agg is not None and self.store is not None
        retry = RESYNC_SECONDS
        now = time.time()
        for index, job in list(self.jobs.items()):
            if not job.finished or index in self.agg.outcomes:
                continue
            pod = self.pods.get(index)
            # A deadline kills the pod; its message would add nothing to the Job's.
            needs_pod = job.succeeded or job.reason != "DeadlineExceeded"
            if needs_pod and (pod is None or (job.succeeded and pod.phase != "Succeeded")):
                waited = now - (job.finished_at or now)
                if waited < POD_GRACE_SECONDS:
                    retry = min(retry, POD_GRACE_SECONDS - waited + 0.1)
                    continue
            outcome = outcome_of(index, job, pod)
            self.agg.record(outcome)
            self.store.add(outcome)
            (metrics.SUBTASKS_SUCCEEDED if outcome.succeeded else metrics.SUBTASKS_FAILED).inc()
        return retry

    async def _release_recorded(self, spec: ParallelWorkloadSpec) -> None:
        """Outcomes are stored: forget those children, and only now let their TTL run."""
        assert self.agg is not None
        recorded = [i for i in self.jobs if i in self.agg.outcomes]
        patches = []
        for i in recorded:
            job = self.jobs.pop(i)
            self.pods.pop(i, None)
            ttl = spec.templates[self._template_of(i)].ttl_seconds_after_finished
            if ttl is not None:
                patches.append(
                    self.kube.merge_patch(
                        self._path("jobs", "batch/v1", job.name), {"spec": {"ttlSecondsAfterFinished": ttl}}
                    )
                )
        for result in await asyncio.gather(*patches, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("workload %s/%s: setting a Job's TTL failed: %s", self.namespace, self.name, result)

    def _template_of(self, index: int) -> str:
        assert self.subtasks is not None
        return self.subtasks[index].template

    async def _apply_suspend(self, spec: ParallelWorkloadSpec, active: list[int]) -> None:
        todo = [i for i in active if self.jobs[i].suspended != spec.suspend]
        if not todo:
            return
        await asyncio.gather(
            *(
                self.kube.merge_patch(
                    self._path("jobs", "batch/v1", self.jobs[i].name), {"spec": {"suspend": spec.suspend}}
                )
                for i in todo
            )
        )
        for i in todo:
            self.jobs[i].suspended = spec.suspend

    async def _create(self, spec: ParallelWorkloadSpec, active: int) -> None:
        """Top the window up. Creations run as a pipeline of tasks (at most MAX_CREATING in flight);
        each one that finishes wakes the loop, which starts the next, so there is no batch tail."""
        assert self.subtasks is not None and self.agg is not None
        if self.create_errors:
            err, self.create_errors = self.create_errors[0], []
            _raise_create_error(err)
        room = min(spec.parallelism - active - len(self.creating), MAX_CREATING - len(self.creating))
        total = len(self.subtasks)
        i = self.next_index
        owner, path = self.owner, self._path("jobs", "batch/v1")
        while room > 0 and i < total:
            if i not in self.agg.outcomes and i not in self.jobs and i not in self.creating:
                self.creating.add(i)
                task = asyncio.create_task(self._create_one(spec, owner, path, self.subtasks[i], total))
                self.create_tasks.add(task)
                task.add_done_callback(self.create_tasks.discard)
                room -= 1
            i += 1
        # Everything below i is created, being created or done; a deleted Job or a failed
        # creation moves next_index back.
        self.next_index = i

    async def _create_one(self, spec: ParallelWorkloadSpec, owner: Owner, path: str, s: Subtask, total: int) -> None:
        try:
            job = render_job(owner, spec, s, total)
            started = time.perf_counter()
            created, body = await self.kube.create(path, job)
            metrics.JOB_CREATE_SECONDS.observe(time.perf_counter() - started)
            if created:
                metrics.SUBTASKS_CREATED.inc()
                self.jobs.setdefault(s.index, JobState.from_body(body))
            elif s.index not in self.jobs:
                existing = await self.kube.get(f"{path}/{job['metadata']['name']}")
                if existing is not None:
                    self._check_ours(existing)
                    self.jobs[s.index] = JobState.from_body(existing)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.create_errors.append(e)
            self.next_index = min(self.next_index, s.index)
        finally:
            self.creating.discard(s.index)
            self.wake.set()

    def _check_ours(self, job: dict[str, Any]) -> None:
        refs = job["metadata"].get("ownerReferences") or []
        if not any(r.get("uid") == self.uid for r in refs):
            raise Stalled(
                "NameConflict",
                f"Job {job['metadata']['name']!r} exists and belongs to something else; rename the workload "
                "or delete that Job",
                retry=60,
            )

    # ---- status ------------------------------------------------------------------------------
    async def _report(self, spec: ParallelWorkloadSpec, total: int, allowed: int, failing: bool, active: int) -> float:
        assert self.agg is not None
        agg = self.agg
        prev = self.body.get("status") or {}
        result = None
        results_ref = {
            "configMapPrefix": child_name(self.name, "results-"),
            "chunks": self.store.chunks if self.store else 0,
            "key": KEY,
        }
        completion = None
        if failing:
            phase, reason = "Failed", "TooManyFailures"
            message = f"{agg.failed} subtasks failed, more than the {allowed} allowed by spec.failurePolicy"
            if active:
                message += f"; no new subtasks start, {active} still finishing"
            else:
                completion = prev.get("completionTime") or now_iso()
        elif agg.finished == total:
            phase, reason, message, result, completion = await self._finish(spec, prev, total)
        elif spec.suspend:
            phase, reason = "Suspended", "Suspended"
            message = f"suspended: {agg.finished}/{total} subtasks finished; set spec.suspend=false to resume"
        else:
            phase, reason = "Running", "SubtasksRunning"
            message = f"{agg.succeeded}/{total} subtasks succeeded, {agg.failed} failed, {active} active"
        if completion and not self.finished_reported:
            self.finished_reported = True
            await self._event(
                "Normal" if phase == "Succeeded" else "Warning",
                "Succeeded" if phase == "Succeeded" else "Failed",
                message,
            )
            created = self.body["metadata"].get("creationTimestamp")
            if created:
                started = datetime.fromisoformat(created.replace("Z", "+00:00"))
                metrics.WORKLOAD_SECONDS.observe((datetime.now(UTC) - started).total_seconds())
        status = build(
            phase=phase,
            reason=reason,
            message=message,
            generation=self.generation,
            total=total,
            active=active,
            agg=agg,
            previous=prev,
            start_time=prev.get("startTime") or now_iso(),
            completion_time=completion,
            result=result if result is not None else prev.get("result") if completion else None,
            results_ref=results_ref,
        )
        return await self._write_status(status, final=completion is not None)

    async def _finish(
        self, spec: ParallelWorkloadSpec, prev: dict[str, Any], total: int
    ) -> tuple[str, str, str, Any, str | None]:
        assert self.agg is not None and self.store is not None
        agg = self.agg
        base = f"{agg.succeeded}/{total} subtasks succeeded"
        if agg.failed:
            base += f", {agg.failed} failed (within spec.failurePolicy)"
        reduce = spec.results.reduce if spec.results else None
        if prev.get("phase") in FINISHED:
            return (
                prev["phase"],
                _reason(prev),
                prev.get("message", base),
                prev.get("result"),
                prev.get("completionTime"),
            )
        if reduce is None:
            outcomes = await self.store.all_results()
            summary = Aggregate(total=total)
            for o in outcomes:
                summary.record(o)
            return "Succeeded", "AllSubtasksFinished", base, summary.summary(), now_iso()
        if self.reduce_job is None:
            await self._start_reduce(spec)
            return "Reducing", "Reducing", f"{base}; reducing", None, None
        if not self.reduce_job.finished:
            return "Reducing", "Reducing", f"{base}; reducing", None, None
        if self.reduce_pod is None and self.reduce_job.succeeded:
            return "Reducing", "Reducing", f"{base}; collecting the reduce result", None, None
        if self.reduce_job.succeeded:
            assert self.reduce_pod is not None
            try:
                result = decode_result(self.reduce_pod.message, self.reduce_pod.budget)
            except ResultTruncated as e:
                return "Failed", "ResultTruncated", f"the reduce step's {e}", None, now_iso()
            return "Succeeded", "Reduced", base, result, now_iso()
        detail = self.reduce_pod.message.strip() if self.reduce_pod else self.reduce_job.message
        return "Failed", "ReduceFailed", f"the reduce step failed: {detail}", None, now_iso()

    async def _start_reduce(self, spec: ParallelWorkloadSpec) -> None:
        assert self.store is not None
        agg = Aggregate(total=len(self.subtasks or []))
        for o in await self.store.all_results():
            agg.record(o)
        payload = json.dumps(agg.reduce_input(), separators=(",", ":")).encode()
        name = child_name(self.name, "reduce-input")
        body = config_map_body(self.owner, name, payload, {LABEL_ROLE: "reduce-input"})
        await self.kube.create(self._path("configmaps", "v1"), body)
        created, _ = await self.kube.create(
            self._path("jobs", "batch/v1"), render_reduce_job(self.owner, spec, name, KEY)
        )
        self.reduce_job = JobState(name=child_name(self.name, "reduce"))
        if created:
            await self._event("Normal", "Reducing", "all subtasks finished; the reduce Job started")

    async def _write_status(self, status: dict[str, Any], final: bool = False) -> float:
        comparable = _without_times(status)
        if self.written is not None and comparable == self.written:
            return RESYNC_SECONDS
        since = time.monotonic() - self.last_write
        if since < self.settings.status_interval and not final:
            return self.settings.status_interval - since
        path = self._path(PLURAL, API_VERSION, self.name, "status")
        body = await self.kube.merge_patch(path, {"status": status})
        metrics.STATUS_PATCHES.inc()
        self.last_write = time.monotonic()
        self.written = comparable
        if body is not None:
            self.body = {**self.body, "status": body.get("status", status)}
        if status.get("completionTime") and status["phase"] in FINISHED:
            # Finished: the status holds what is left to know; free the plan and the indexes.
            self.subtasks = self.agg = self.store = None
            self.jobs.clear()
            self.pods.clear()
        return RESYNC_SECONDS

    async def _stalled(self, e: Stalled) -> float:
        prev = self.body.get("status") or {}
        agg = self.agg
        phase = prev.get("phase") if prev.get("phase") in ("Running", "Suspended", "Reducing") else "Pending"
        status = build(
            phase=phase,
            reason=e.reason,
            message=e.message,
            generation=self.generation,
            total=len(self.subtasks) if self.subtasks else 0,
            active=len([j for j in self.jobs.values() if not j.finished]),
            agg=agg,
            previous=prev,
            stalled=True,
            start_time=prev.get("startTime"),
        )
        if self.written != _without_times(status):
            await self._event("Warning", e.reason, e.message)
            self.last_write = 0.0
            try:
                await self._write_status(status, final=True)
            except ApiError as err:
                log.warning("workload %s/%s: status write failed: %s", self.namespace, self.name, err)
        # Back off while it stays stalled; any change to the workload wakes the loop at once.
        retry = min(e.retry, self.stall_retry)
        self.stall_retry = min(self.stall_retry * 2, e.retry)
        return retry

    async def _finished_housekeeping(self, spec: ParallelWorkloadSpec, status: dict[str, Any]) -> float:
        gen = self.generation
        if gen is not None and status.get("observedGeneration") != gen:
            # A spec edit after the end changes nothing, but kstatus readers (Argo CD, Flux) need
            # to see that this generation was observed, or they wait forever.
            conditions = [{**c, "observedGeneration": gen} for c in status.get("conditions") or []]
            await self.kube.merge_patch(
                self._path(PLURAL, API_VERSION, self.name, "status"),
                {"status": {"observedGeneration": gen, "conditions": conditions}},
            )
        ttl = spec.ttl_seconds_after_finished
        if ttl is None or not status.get("completionTime"):
            return 3600.0
        done = datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
        left = ttl - (datetime.now(UTC) - done).total_seconds()
        if left > 0:
            return left
        await self.kube.delete(self._path(PLURAL, API_VERSION, self.name))
        return 3600.0

    async def _event(self, kind: str, reason: str, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name[:200]}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "apwa-operator"},
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "count": 1,
            "reportingComponent": "apwa.dev/operator",
        }
        try:
            await self.kube.create(self._path("events", "v1"), body)
        except ApiError as e:
            log.info("event not posted: %s", e)


def _raise_create_error(err: BaseException) -> None:
    if isinstance(err, RenderError):
        raise Stalled("InvalidTemplate", str(err), retry=300)
    if isinstance(err, ApiError) and err.status in (400, 422):
        raise Stalled("JobRejected", f"the API server rejected a subtask Job: {err.message}", retry=60)
    if isinstance(err, ApiError) and err.status == 403:
        # Usually a ResourceQuota or a terminating namespace: worth retrying, but say so.
        raise Stalled("Forbidden", f"creating subtask Jobs is forbidden: {err.message}", retry=15)
    raise err


def outcome_of(index: int, job: JobState, pod: PodResult | None) -> SubtaskOutcome:
    if job.succeeded:
        try:
            result = decode_result(pod.message, pod.budget) if pod else None
        except ResultTruncated as e:  # never a success without its whole result
            return SubtaskOutcome(index, False, reason="ResultTruncated", message=str(e), job=job.name)
        return SubtaskOutcome(index, True, result=result, job=job.name)
    message = (pod.message.strip() if pod and pod.message.strip() else "") or job.message
    return SubtaskOutcome(
        index,
        False,
        reason=job.reason or "Failed",
        message=message,
        exit_code=pod.exit_code if pod else None,
        job=job.name,
    )


def _reason(status: dict[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("reason", "")
    return ""


def _without_times(status: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if k not in ("startTime", "completionTime")}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]]
    return out
