"""One reconcile loop per ParallelWorkload: observe, ask the core, execute what it says.

The loop owns the I/O of its workload: the plan (fetched data, stored dynamic plans), the index
of its Jobs and Pods (fed by the shared watches), the durable result store, and the status. It
wakes on any event for the workload or its children and does one step: read the spec, plan once,
seed from what an earlier operator left, then hand everything to `apwa.core.decide` and execute
the actions it returns, in order. The status is written at most once per step (and at most once
per `status_interval` unless final); events go out after that write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field, replace
from typing import Any

from apwa import API_VERSION, PLURAL, metrics
from apwa.api.models import ParallelWorkloadSpec
from apwa.api.vocabulary import FINISHED, EventType, Phase, Reason, Role
from apwa.common.messages import no_key
from apwa.common.times import parse_iso
from apwa.controller import faultpoints, kueue
from apwa.controller.dynamic import PlanContext, stored_plan
from apwa.controller.effects import Creations, StatusWriter, event_body
from apwa.controller.finalizers import PodReleaser
from apwa.controller.inputs import object_plan
from apwa.controller.store import KEY, ConfigMapChunks, ObjectChunks, ResultStore, config_map_body, open_bucket
from apwa.controller.vitals import VITALS
from apwa.core import (
    RESYNC_SECONDS,
    Action,
    ChildIndex,
    CreateJobs,
    DeleteWorkload,
    HoldQueuedJobs,
    JobState,
    PatchStatus,
    PostEvent,
    RecordOutcomes,
    ReleaseJobs,
    Reset,
    ResetOutcomes,
    Stalled,
    StartReduce,
    Step,
    SuspendJobs,
    World,
    WriteStatus,
    accept_retry,
    decide,
    finished,
    holds_result,
    make_plan,
    planning_status,
    read_spec,
    retry_observed,
    retry_requested,
    stall_of,
    stalled,
)
from apwa.kube.client import ApiError, Kube, ns_path
from apwa.planning import DEFAULT_MAX_SUBTASKS, PlanningError, Subtask
from apwa.rendering import (
    ANNOTATION_HELD,
    DEFAULT_SIDECAR_IMAGE,
    LABEL_ROLE,
    LABEL_UID,
    Owner,
    attempt_suffix,
    child_name,
    render_job,
    render_network_policy,
    render_reduce_job,
    without_result_finalizer,
)
from apwa.rendering.packed import MAX_PLAN_BYTES, plan_lines, render_chunk
from apwa.results import Aggregate, SubtaskOutcome
from apwa.results.usage import merged
from apwa.status import is_finished

log = logging.getLogger("apwa.workload")
# Steps scan the workload's Jobs; at thousands of child events per second one step per event
# would spend the CPU the API server needs. Events arriving within this interval share a step.
MIN_STEP_INTERVAL = 0.1
ERROR_RETRY_SECONDS = 5.0
FIRST_STALL_BACKOFF = 5.0
# Written as null when a status no longer has them: a status write is a merge patch, and a retry
# takes a finished workload back to Running (no completion time, no result, fewer failures).
CLEARED_WHEN_ABSENT = ("completionTime", "result", "failedSubtasks")


@dataclass
class Settings:
    status_interval: float = 1.0
    max_subtasks: int = DEFAULT_MAX_SUBTASKS
    metrics_port: int = 8080
    namespaces: list[str] = field(default_factory=list)
    # The image of the store sidecar in subtask pods (any image with the apwa package).
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    # APWA_POD_FINALIZER=0 creates pods without the result finalizer: for benchmarks and as an
    # escape hatch only (a pod removed before its message is read then costs its result).
    pod_finalizer: bool = True


@dataclass
class Planned:
    """What a planned workload has; all of it exists from planning until the end."""

    subtasks: list[Subtask]
    outcomes: Aggregate
    store: ResultStore
    # Subtasks a retry reset whose new outcome is not stored yet, by index (from the store).
    pending: dict[int, Reset] = field(default_factory=dict)


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
        self.children = ChildIndex()
        self.planned: Planned | None = None
        self.seeded = False
        self.netpol_done = False
        self.writer = StatusWriter(kube, self._path(PLURAL, API_VERSION, self.name, "status"), settings.status_interval)
        self.stall_backoff = FIRST_STALL_BACKOFF
        self.creations = Creations()
        self.events: list[PostEvent] = []  # posted after the next status write
        self.task: asyncio.Task[None] | None = None
        self.releaser = PodReleaser(kube)
        self.leftovers_released = False  # a finished workload's pods: listed once per operator run
        # For the per-workload metrics: progress since this operator started (a restart starts
        # the clock again), and the failures the spec tolerates, known once planned.
        self.progress_at = time.time()
        self.failure_budget: int | None = None
        self.stopped = False
        # Set by the registry: what a DELETED event does, for a workload found gone otherwise.
        self.on_gone: Callable[[], None] = self.stop

    # ---- events from the shared watches ------------------------------------------------------
    def _recorded(self) -> Container[int]:
        return self.planned.outcomes.outcomes if self.planned else ()

    def on_workload(self, body: dict[str, Any]) -> None:
        self.body = body
        self.wake.set()

    def on_job(self, event_type: str, job: dict[str, Any]) -> None:
        effect = self.children.job_event(event_type, job, self._recorded(), time.time())
        if effect.finished is not None and effect.finished.finished_at:
            metrics.WATCH_LAG.observe(max(time.time() - effect.finished.finished_at, 0.0))
        if effect.changed:
            self.wake.set()

    def forget_jobs_not_in(self, uids: set[str]) -> None:
        if self.children.forget_jobs_not_in(uids):
            self.wake.set()

    def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        self._hold(event_type, pod)
        if self.children.pod_event(event_type, pod, self._recorded()):
            self.wake.set()

    # ---- the loop ----------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # _loop catches every step's errors: this is a bug
            VITALS.loop_ended(self.key, repr(e))
            raise
        finally:
            VITALS.step_ended(self.key)
            self.creations.cancel()

    def stop(self) -> None:
        """The workload is gone: end the loop and drop its series.

        The flag, not only the cancellation: on Python 3.11 asyncio.wait_for can swallow a
        cancellation that arrives as its awaitable completes (a wake at the moment of the delete),
        and the loop would then go on and publish the series again.
        """
        self.stopped = True
        if self.task:
            self.task.cancel()
        metrics.forget_workload(self.namespace, self.name)

    async def _loop(self) -> None:
        delay = 0.0
        failed = False
        while not self.stopped:
            if failed:
                # A failed step waits out its delay: child events keep coming while a write keeps
                # failing (a 403 or 409 the client does not retry), and each would retry it at once.
                await asyncio.sleep(delay)
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            await asyncio.sleep(MIN_STEP_INTERVAL)  # rate limit, not synchronisation: see above
            self.wake.clear()
            VITALS.step_started(self.key)
            failed = False
            try:
                if faultpoints.passed(faultpoints.Point.STEP):
                    await faultpoints.forever()
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Stalled as e:
                delay = await self._stalled(e)
            except ApiError as e:
                # Already retried with backoff inside the client; one line is enough here.
                log.warning("workload %s/%s: %s; retrying", self.namespace, self.name, e)
                delay, failed = ERROR_RETRY_SECONDS, True
                if e.namespace_terminating:
                    # The namespace goes, pods first (Kubernetes' ordered namespace deletion) and
                    # this workload after them: nothing can be stored any more, and pods held for
                    # their results would keep the namespace (and the workload) from ever going.
                    self.release_all_held()
                elif e.status == 404 and await self._gone():
                    # Deleted with its namespace: kopf may stop watching a namespace that goes
                    # before it delivers the workload's DELETED event, and the loop would go on.
                    self.on_gone()
            except Exception:
                log.exception("workload %s/%s: step failed; retrying", self.namespace, self.name)
                delay, failed = ERROR_RETRY_SECONDS, True
            VITALS.step_ended(self.key)
            if not self.stopped:
                self.publish_metrics()  # after a stall too: a stalled workload's progress time stays put

    async def _gone(self) -> bool:
        """Whether the workload no longer exists (False when the API server can't say)."""
        try:
            return await self.kube.get(self._path(PLURAL, API_VERSION, self.name)) is None
        except ApiError:
            return False

    def progressed(self) -> None:
        self.progress_at = time.time()

    def publish_metrics(self) -> None:
        """This workload's series: none once finished; no progress time while suspended."""
        phase = self.status.get("phase")
        if phase in FINISHED:
            metrics.forget_workload(self.namespace, self.name)
            return
        planned = self.planned
        metrics.publish_workload(
            self.namespace,
            self.name,
            progress_at=None if phase == Phase.SUSPENDED else self.progress_at,
            failed=planned.outcomes.failed if planned else None,
            budget=self.failure_budget if planned else None,
        )

    @property
    def owner(self) -> Owner:
        meta = self.body["metadata"]
        return Owner(self.name, self.namespace, self.uid, meta.get("labels") or {}, self.settings.sidecar_image)

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")

    @property
    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def _path(self, plural: str, group_version: str, name: str | None = None, sub: str | None = None) -> str:
        return ns_path(group_version, self.namespace, plural, name, sub)

    async def step(self) -> float:
        spec = read_spec(self.body.get("spec"))
        now = time.time()
        retry = retry_requested(spec, self.status)
        if is_finished(self.status):
            if retry is None:
                # Finished (maybe before this operator started): nothing runs any more.
                await self._release_leftovers()
                return await self._execute(finished(spec, self.status, self.generation, now), spec)
            self._reopen()
        planned = self.planned or await self._plan(spec)
        self.failure_budget = spec.failure.allowed(len(planned.subtasks))
        if not self.seeded:
            await self._seed(planned)
        if not self.netpol_done:
            await self.kube.create(
                self._path("networkpolicies", "networking.k8s.io/v1"),
                render_network_policy(self.owner, spec.isolation_or_default, spec.store, spec.agent),
            )
            self.netpol_done = True
        if planned.store.dirty:  # outcomes of a step whose store write failed
            await planned.store.flush()
        self.children.set_round(retry_observed(self.status))
        world = World(
            spec=spec,
            plan=planned.subtasks,
            children=self.children,
            outcomes=planned.outcomes,
            previous=self.status,
            generation=self.generation,
            creating=self.creations.in_flight,
            results_ref=planned.store.ref,
            pods_current_since=VITALS.current_since("pods"),
        )
        if retry is not None:
            return await self._execute(accept_retry(world, retry, planned.pending, now), spec)
        return await self._execute(decide(world, now), spec)

    def _reopen(self) -> None:
        """A retry of a finished workload: its plan, outcomes and children are read again."""
        self.planned = None
        self.seeded = False
        self.children = ChildIndex()

    # ---- executing the core's actions --------------------------------------------------------
    async def _execute(self, step: Step, spec: ParallelWorkloadSpec) -> float:
        wake = step.wake_in
        for action in step.actions:
            wake = min(wake, await self._do(action, spec))
        await self._post_events()
        return wake

    async def _do(self, action: Action, spec: ParallelWorkloadSpec) -> float:
        """Execute one action; returns how soon to look again (only status writes shorten it)."""
        match action:
            case RecordOutcomes(outcomes):
                await self._record(outcomes)
            case ResetOutcomes(resets):
                await self._reset(resets)
            case ReleaseJobs(jobs):
                await self._release(jobs)
            case SuspendJobs(jobs, suspend):
                await self._suspend(jobs, suspend)
            case HoldQueuedJobs(jobs, hold):
                return await self._hold_queued(jobs, hold)
            case CreateJobs(indices, resume_at):
                self._create(spec, indices, resume_at)
            case StartReduce():
                await self._start_reduce(spec)
            case WriteStatus(status, final):
                return await self._write(status, final)
            case PatchStatus(patch):
                await self.kube.merge_patch(self._path(PLURAL, API_VERSION, self.name, "status"), {"status": patch})
            case PostEvent():
                self.events.append(action)
            case DeleteWorkload():
                await self.kube.delete(self._path(PLURAL, API_VERSION, self.name))
        return RESYNC_SECONDS

    async def _record(self, outcomes: tuple[SubtaskOutcome, ...]) -> None:
        assert self.planned is not None, "outcomes are only collected once planned"
        for o in outcomes:
            self.planned.outcomes.record(o)
            earlier = self.planned.pending.pop(o.index, None)
            # Stored with what its earlier attempts spent too, so a restart sums every attempt.
            spent = merged(u for u in (earlier.usage if earlier else None, o.usage) if u)
            self.planned.store.add(replace(o, usage=spent) if earlier and earlier.usage else o)
            (metrics.SUBTASKS_SUCCEEDED if o.succeeded else metrics.SUBTASKS_FAILED).inc()
            metrics.count_usage(self.namespace, self.name, self.model, o.usage)
        if outcomes:
            self.progressed()
        await self.planned.store.flush()
        faultpoints.passed(faultpoints.Point.OUTCOMES_STORED)

    async def _reset(self, resets: tuple[Reset, ...]) -> None:
        """Durably first: an operator that stops before the status is written finds them again."""
        assert self.planned is not None, "a retry is accepted once planned"
        await self.planned.store.reset(resets)
        metrics.SUBTASKS_RETRIED.inc(len(resets))
        for r in resets:
            self.planned.outcomes.forget(r.index)
            self.planned.pending[r.index] = r
            self.children.retry(r.index, r.attempt)

    @property
    def model(self) -> str:
        """spec.agent.model, the label of the usage metrics ("" for a workload without an agent)."""
        return str(((self.body.get("spec") or {}).get("agent") or {}).get("model", ""))

    async def _release(self, jobs: tuple[tuple[int, str, int | None], ...]) -> None:
        patches = []
        for index, name, ttl in jobs:
            self.releaser.release(self.namespace, self.children.let_go(index))
            if self.children.release(index) and ttl is not None:  # a chunk's TTL waits for its last
                body = {"spec": {"ttlSecondsAfterFinished": ttl}}
                patches.append(self.kube.merge_patch(self._path("jobs", "batch/v1", name), body))
        for result in await asyncio.gather(*patches, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("workload %s/%s: setting a Job's TTL failed: %s", self.namespace, self.name, result)
            else:
                faultpoints.passed(faultpoints.Point.TTL_PATCHED)

    async def _suspend(self, jobs: tuple[tuple[int, str], ...], suspend: bool) -> None:
        # One patch sets both: a Job is never suspended by us without the mark that resumes it.
        mark = {"annotations": {ANNOTATION_HELD: "true" if suspend else None}}
        body = {"metadata": mark, "spec": {"suspend": suspend}}
        names = dict.fromkeys(name for _, name in jobs)  # a packed chunk is patched once for all its subtasks
        await asyncio.gather(*(self.kube.merge_patch(self._path("jobs", "batch/v1", name), body) for name in names))
        for index, _ in jobs:
            if (job := self.children.jobs.get(index)) is not None:
                job.suspended = job.held = suspend

    async def _hold_queued(self, jobs: tuple[tuple[int, str], ...], hold: bool) -> float:
        """Deactivate (hold) or reactivate the Kueue Workloads of these Jobs, then mark or unmark the
        Jobs: in that order, so an interruption leaves a Job whose mark says to try again."""
        uids = {self.children.jobs[i].uid: (i, name) for i, name in jobs if i in self.children.jobs}
        found = await kueue.workloads_of(self.kube, self.namespace, uids.keys())
        await kueue.set_active(self.kube, self.namespace, found.values(), active=not hold)
        # Resuming a Job whose Workload is gone is done: Kueue makes it a new, active one.
        done = [uids[u] for u in uids if u in found or not hold]
        body = {"metadata": {"annotations": {ANNOTATION_HELD: "true" if hold else None}}}
        await asyncio.gather(
            *(self.kube.merge_patch(self._path("jobs", "batch/v1", n), body) for n in dict.fromkeys(n for _, n in done))
        )
        held = {name for _, name in done}
        for index, name in jobs:
            if name in held and (job := self.children.jobs.get(index)) is not None:  # may have finished meanwhile
                job.held = hold
        return RESYNC_SECONDS if len(done) == len(jobs) else kueue.RETRY_SECONDS

    def _create(self, spec: ParallelWorkloadSpec, indices: tuple[int, ...], resume_at: int) -> None:
        # A refused creation is reported first; then none of these start and the window stays.
        self.creations.raise_pending()
        assert self.planned is not None, "Jobs are only created once planned"
        owner, path, subtasks = self.owner, self._path("jobs", "batch/v1"), self.planned.subtasks
        # No await until every task exists: a creation failing later moves the cursor back.
        self.children.advance(resume_at)
        if spec.packed:
            for chunk in self._chunks(indices, spec.packed):
                self.creations.in_flight.update(chunk)
                task = asyncio.create_task(self._create_chunk(spec, owner, [subtasks[i] for i in chunk], len(subtasks)))
                self.creations.tasks.add(task)
                task.add_done_callback(self.creations.tasks.discard)
            return
        for i in indices:
            self.creations.in_flight.add(i)
            task = asyncio.create_task(self._create_one(spec, owner, path, subtasks[i], len(subtasks)))
            self.creations.tasks.add(task)
            task.add_done_callback(self.creations.tasks.discard)

    async def _create_one(self, spec: ParallelWorkloadSpec, owner: Owner, path: str, s: Subtask, total: int) -> None:
        try:
            job = render_job(owner, spec, s, total, self.children.attempts.get(s.index, 0))
            if not self.settings.pod_finalizer:
                without_result_finalizer(job)
            started = time.perf_counter()
            created, body = await self.kube.create(path, job)
            metrics.JOB_CREATE_SECONDS.observe(time.perf_counter() - started)
            if created:
                faultpoints.passed(faultpoints.Point.JOB_CREATED)
                metrics.SUBTASKS_CREATED.inc()
                self.progressed()
                self.children.jobs.setdefault(s.index, JobState.from_body(body))
            elif s.index not in self.children.jobs:
                existing = await self.kube.get(f"{path}/{job['metadata']['name']}")
                if existing is not None:
                    self._check_ours(existing)
                    self.children.jobs[s.index] = JobState.from_body(existing)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.creations.errors.append(e)
            self.children.lose(s.index)
        finally:
            self.creations.in_flight.discard(s.index)
            self.wake.set()

    def _chunks(self, indices: tuple[int, ...], size: int) -> list[list[int]]:
        """The window's indices as chunks: at most `size` subtasks of one template and one attempt
        each, whose plan fits a ConfigMap."""
        assert self.planned is not None
        plan, attempts = self.planned.subtasks, self.children.attempts
        out: list[list[int]] = []
        kind: tuple[str, int] | None = None
        used = 0
        for i in indices:
            this = (plan[i].template, attempts.get(i, 0))
            cost = len(plan_lines([plan[i]]))
            if not out or this != kind or len(out[-1]) >= size or used + cost > MAX_PLAN_BYTES:
                out.append([])
                kind, used = this, 0
            out[-1].append(i)
            used += cost
        return out

    async def _create_chunk(self, spec: ParallelWorkloadSpec, owner: Owner, chunk: list[Subtask], total: int) -> None:
        """A packed chunk: its plan's ConfigMap, then its Indexed Job (a pod can't start before its plan)."""
        indices = [s.index for s in chunk]
        try:
            job, plan = render_chunk(owner, spec, chunk, total, self.children.attempts.get(chunk[0].index, 0))
            if not self.settings.pod_finalizer:
                without_result_finalizer(job)
            await self.kube.create(self._path("configmaps", "v1"), plan)  # exists already: from an earlier try
            path = self._path("jobs", "batch/v1")
            started = time.perf_counter()
            created, body = await self.kube.create(path, job)
            metrics.JOB_CREATE_SECONDS.observe(time.perf_counter() - started)
            if created:
                faultpoints.passed(faultpoints.Point.JOB_CREATED)
                metrics.SUBTASKS_CREATED.inc(len(chunk))
                self.progressed()
            else:
                body = await self.kube.get(f"{path}/{job['metadata']['name']}")
                if body is not None:
                    self._check_ours(body)
            if body is not None:
                self.children.seed_job(body, self._recorded(), time.time())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.creations.errors.append(e)
            for i in indices:
                self.children.lose(i)
        finally:
            self.creations.in_flight.difference_update(indices)
            self.wake.set()

    def _check_ours(self, job: dict[str, Any]) -> None:
        refs = job["metadata"].get("ownerReferences") or []
        if not any(r.get("uid") == self.uid for r in refs):
            raise Stalled(
                Reason.NAME_CONFLICT,
                f"Job {job['metadata']['name']!r} exists and belongs to something else; rename the workload "
                "or delete that Job",
                retry=60,
            )

    async def _start_reduce(self, spec: ParallelWorkloadSpec) -> None:
        assert self.planned is not None, "the reduce starts once every planned subtask finished"
        total = len(self.planned.subtasks)
        attempt = self.children.round  # each retry reduces again, from its own input
        name = child_name(self.name, attempt_suffix(Role.REDUCE_INPUT.value, attempt))
        if spec.store is None:
            agg = Aggregate(total=total)
            for o in await self.planned.store.all_results():  # what is stored is what the reduce gets
                agg.record(o)
            payload = json.dumps(agg.reduce_input(), separators=(",", ":")).encode()
            body = config_map_body(self.owner, name, payload, {LABEL_ROLE: Role.REDUCE_INPUT})
            await self.kube.create(self._path("configmaps", "v1"), body)
        # With a store the reduce pod streams the stored outcomes itself (apwa-store fetch-results).
        job = render_reduce_job(self.owner, spec, name, KEY, total=total, attempt=attempt)
        if not self.settings.pod_finalizer:
            without_result_finalizer(job)
        await self.kube.create(self._path("jobs", "batch/v1"), job)
        self.progressed()
        self.children.reduce_job = self.children.reduce_job or JobState(name=job["metadata"]["name"])

    async def _write(self, status: dict[str, Any], final: bool) -> float:
        cleared = {k: None for k in CLEARED_WHEN_ABSENT if k in self.status and k not in status}
        wake, now_status = await self.writer.write(status, final, cleared)
        if now_status is None:
            return wake
        faultpoints.passed(faultpoints.Point.STATUS_WRITTEN)
        if now_status.get("phase") != self.status.get("phase"):
            self.progressed()
        self.body = {**self.body, "status": now_status}
        if is_finished(status):
            # Finished: the status holds what is left to know; free the plan and the indexes
            # (a retry plans and seeds again from the store).

            # Finished: the status holds what is left to know; free the plan and the indexes.
            metrics.count_usage(self.namespace, self.name, self.model, self.children.usage_of(None))
            self.planned = None
            self.seeded = False
            self.release_all_held()
            self.children.clear()
            started = parse_iso(self.body["metadata"].get("creationTimestamp"))
            if started is not None:
                metrics.WORKLOAD_SECONDS.observe(time.time() - started)
        return wake

    async def _post_events(self) -> None:
        events, self.events = self.events, []
        for e in events:
            await self._event(e)

    # ---- before the core can run: the plan, and what an earlier operator left -----------------
    async def _plan(self, spec: ParallelWorkloadSpec) -> Planned:
        try:
            data = await self._plan_data(spec)
        except PlanningError as e:
            raise stall_of(e) from None
        subtasks = make_plan(spec, data, self.settings.max_subtasks, self.owner)
        chunks: ConfigMapChunks | ObjectChunks
        if spec.store is not None:
            root = self.owner.store_root(spec)
            chunks = ObjectChunks(await open_bucket(self.kube, self.namespace, spec.store, root), root)
        else:
            chunks = ConfigMapChunks(self.kube, self.owner)
        self.planned = Planned(subtasks, Aggregate(total=len(subtasks)), ResultStore(chunks, len(subtasks)))
        self.stall_backoff = FIRST_STALL_BACKOFF
        self.progressed()
        self.events.append(PostEvent(EventType.NORMAL, Reason.PLANNED, f"decomposed into {len(subtasks)} subtasks"))
        return self.planned

    async def _plan_data(self, spec: ParallelWorkloadSpec) -> Any:
        d = spec.decomposition
        if d.config_map_ref is not None:
            return await self._config_map_data(d.config_map_ref.name, d.config_map_ref.key)
        if d.planner is not None or d.objects is not None:
            context = PlanContext(self.kube, self.owner, self.settings.max_subtasks, self._report_planning)
            if d.objects is not None:
                return await object_plan(context, spec, self.owner.store_root(spec))
            return await stored_plan(context, spec)
        return None

    async def _config_map_data(self, name: str, key: str) -> str:
        cm = await self.kube.get(self._path("configmaps", "v1", name))
        field = "spec.decomposition.configMapRef"
        if cm is None:
            raise PlanningError(f"{field}.name", f"ConfigMap {name!r} not found in namespace {self.namespace!r}")
        data = cm.get("data") or {}
        if key not in data:
            raise PlanningError(f"{field}.key", no_key("ConfigMap", name, key, data))
        return data[key]

    async def _report_planning(self, what: str) -> None:
        status = planning_status(self.status, what, self.generation, time.time())
        if status is None:
            return
        try:
            await self._write(status, final=True)
        except ApiError as e:  # informative only: planning goes on without it
            log.warning("workload %s/%s: status write failed: %s", self.namespace, self.name, e)

    async def _seed(self, planned: Planned) -> None:
        """Rebuild what an earlier run of the operator knew: stored outcomes, existing children."""
        outcomes, pending = await planned.store.load()
        for outcome in outcomes:
            planned.outcomes.record(outcome)
        for r in pending:
            planned.pending[r.index] = r
            planned.outcomes.usage.add(r.usage)  # spent by attempts whose outcome a retry reset
            self.children.attempts[r.index] = r.attempt
        recorded = planned.outcomes.outcomes
        selector = f"{LABEL_UID}={self.uid}"
        async for job in self.kube.list(self._path("jobs", "batch/v1"), labelSelector=selector):
            self.children.seed_job(job, recorded, time.time())
        async for pod in self.kube.list(self._path("pods", "v1"), labelSelector=selector):
            self.children.seed_pod(pod, recorded)
            self._hold("ADDED", pod)
        self.seeded = True

    # ---- the result finalizer (controller/finalizers.py says when each pod is released) --------
    def _stored(self) -> Container[int]:
        """Outcomes durably stored (not those of a step whose store write failed)."""
        return self.planned.outcomes.outcomes if self.planned and not self.planned.store.dirty else ()

    def _hold(self, event_type: str, pod: dict[str, Any]) -> None:
        if is_finished(self.status):
            release = event_type != "DELETED" and holds_result(pod)
        else:
            release = self.children.hold(event_type, pod, self._stored())
        if release:
            self.releaser.release(self.namespace, [pod["metadata"]["name"]])

    def release_all_held(self) -> None:
        """The final status is written (or the workload is deleted): no pod needs holding."""
        self.releaser.release(self.namespace, self.children.let_go_all())
        self.leftovers_released = True

    async def _release_leftovers(self) -> None:
        if not self.leftovers_released:
            await self.releaser.release_listed(self.namespace, self.uid)
            self.leftovers_released = True

    # ---- reporting ---------------------------------------------------------------------------
    async def _stalled(self, e: Stalled) -> float:
        p = self.planned
        step, self.stall_backoff = stalled(
            e,
            previous=self.status,
            generation=self.generation,
            total=len(p.subtasks) if p else 0,
            active=sum(1 for j in self.children.jobs.values() if not j.finished and not j.awaiting_admission),
            awaiting_admission=sum(1 for j in self.children.jobs.values() if j.awaiting_admission),
            outcomes=p.outcomes if p else None,
            written=self.writer.written,
            backoff=self.stall_backoff,
            now=time.time(),
        )
        try:
            for action in step.actions:
                if isinstance(action, WriteStatus):
                    await self._write(action.status, final=True)
                elif isinstance(action, PostEvent):
                    self.events.append(action)
            await self._post_events()
        except ApiError as err:
            log.warning("workload %s/%s: status write failed: %s", self.namespace, self.name, err)
        return step.wake_in

    async def _event(self, e: PostEvent) -> None:
        body = event_body(self.owner, self.uid, e, time.time())
        try:
            await self.kube.create(self._path("events", "v1"), body)
        except ApiError as err:
            log.info("event not posted: %s", err)
