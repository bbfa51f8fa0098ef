"""Run a workload's plan as local processes, through the same rendering and result protocol.

Each subtask's Job is rendered exactly as the operator would create it; the runner then executes
its containers' command/args with the rendered environment. The result file stands in for the
termination log. The image is not used (there is no container runtime here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from apwa.api.models import ParallelWorkload
from apwa.core import (
    ChildIndex,
    CreateJobs,
    JobState,
    PodResult,
    RecordOutcomes,
    ReleaseJobs,
    StartReduce,
    Step,
    World,
    WriteStatus,
    decide,
)
from apwa.core.children import DEADLINE_EXCEEDED, JOB_COMPLETE, POD_FAILED, POD_SUCCEEDED
from apwa.planning import Subtask
from apwa.rendering import Owner, render_job, render_reduce_job
from apwa.rendering.failure_policy import action_for
from apwa.results import Aggregate

LOG_TAIL_BYTES = 2048
LOG_TAIL_LINES = 80
# A cluster retries failures a podFailurePolicy Ignores without end; a local run stops at this many attempts.
MAX_LOCAL_ATTEMPTS = 100


class LocalRunError(Exception):
    pass


# How a process run ended, as the Job and pod states the operator would have observed.
Ended = tuple[JobState, PodResult | None]


@dataclass
class _Attempt:
    exit_code: int | None
    result_text: str
    log_tail: str
    timed_out: bool


class Progress:
    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = stream.isatty()
        self._last = 0.0

    def update(self, agg: Aggregate, active: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.1 if self.tty else 2.0):
            return
        self._last = now
        width = 30
        done = agg.finished
        filled = int(width * done / self.total) if self.total else width
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} done: "
            f"{agg.succeeded} succeeded, {agg.failed} failed, {active} running"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _read_output(path: Path) -> str | None:
    """A result the worker left in $APWA_OUTPUT_PATH (what the store sidecar would upload)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None


def _notice(stream: TextIO, text: str) -> None:
    stream.write(f"notice: {text}\n")


def _process_spec(job: dict[str, Any], notices: set[str]) -> list[tuple[list[str], dict[str, str]]]:
    """The commands to run for a rendered Job: init containers, then the first container."""
    pod = job["spec"]["template"]["spec"]
    containers = list(pod.get("initContainers") or []) + pod["containers"][:1]
    if len(pod["containers"]) > 1:
        notices.add("only the first container of a template runs locally; the others are skipped")
    steps = []
    for c in containers:
        argv = list(c.get("command") or []) + list(c.get("args") or [])
        if not c.get("command"):
            raise LocalRunError(
                f"container {c['name']!r} has no command: a local run can't use the image's entrypoint, "
                "so give the template an explicit command"
            )
        if c.get("image"):
            notices.add("container images are ignored locally; commands run on this machine")
        env = {}
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                notices.add(f"env {e['name']} uses valueFrom, which a local run can't resolve; it is unset")
        steps.append((argv, env))
    return steps


class LocalRunner:
    def __init__(self, workload: ParallelWorkload, subtasks: list[Subtask], *, stream: TextIO, progress: bool) -> None:
        self.workload = workload
        # Nothing here resumes a suspended run: a local run ignores spec.suspend, as it always has.
        self.spec = workload.spec.model_copy(update={"suspend": False, "store": None})
        # No object store locally: a result of any size written to $APWA_OUTPUT_PATH is read
        # straight from that file, as the store sidecar would have uploaded it.
        self.store_notice = workload.spec.store is not None
        self.subtasks = subtasks
        self.stream = stream
        self.owner = Owner(workload.metadata.name, workload.metadata.namespace, None, workload.metadata.labels or {})
        self.agg = Aggregate(total=len(subtasks))
        self.progress = Progress(len(subtasks), stream, progress)
        self.notices: set[str] = set()
        if self.store_notice:
            self.notices.add("spec.store is not used locally: results of any size are read from $APWA_OUTPUT_PATH")
        self.procs: set[asyncio.subprocess.Process] = set()
        self.spawned: list[asyncio.subprocess.Process] = []  # every process ever started
        self.jobs = [render_job(self.owner, self.spec, s, len(subtasks)) for s in subtasks]
        self.tmp = Path(tempfile.mkdtemp(prefix="apwa-local-"))
        # Commands such as `python3` or `apwa-example-wordcount` resolve to this installation.
        self.base_env = dict(os.environ)
        self.base_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.base_env.get("PATH", "")

    async def _run_step(self, argv: list[str], env: dict[str, str], deadline: float | None, log: Path) -> _Attempt:
        result = Path(env["APWA_RESULT_PATH"])
        _remove(result)
        with log.open("wb") as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env={**self.base_env, **env},
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as e:
                return _Attempt(127, "", f"cannot start {argv[0]!r}: {e.strerror}", False)
            self.procs.add(proc)
            self.spawned.append(proc)
            timed_out = False
            try:
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0.01)
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
                _kill(proc)
                await proc.wait()
            except asyncio.CancelledError:
                _kill(proc)  # Ctrl-C: whichever task is cancelled first, its process goes
                raise
            finally:
                self.procs.discard(proc)
        text, tail = _read_outputs(result, log)
        return _Attempt(proc.returncode, text, tail, timed_out)

    async def _run_job(self, job: dict[str, Any], key: str, extra_env: dict[str, str]) -> Ended:
        """Run a rendered Job's containers as processes, with its retries and deadline; report
        the end as the Job and pod states the operator would observe."""
        steps = _process_spec(job, self.notices)
        name = job["metadata"]["name"]
        limit = job["spec"]["backoffLimit"]
        deadline_s = job["spec"].get("activeDeadlineSeconds")
        deadline = time.monotonic() + deadline_s if deadline_s else None
        policy = job["spec"].get("podFailurePolicy") or {}
        main = job["spec"]["template"]["spec"]["containers"][0]["name"]
        attempt: _Attempt | None = None
        counted = n = 0  # failures counted against backoffLimit; attempts
        while counted <= limit:
            n += 1
            output = self.tmp / f"{key}.output"
            _remove(output)  # an earlier attempt's output is not this one's
            for s, (argv, env) in enumerate(steps):
                env = {**env, **extra_env, "APWA_RESULT_PATH": str(self.tmp / f"{key}.{s}.result")}
                if self.store_notice:
                    env["APWA_OUTPUT_PATH"] = str(output)
                attempt = await self._run_step(argv, env, deadline, self.tmp / f"{key}.{n}.{s}.log")
                if attempt.exit_code != 0:
                    break
            assert attempt is not None
            if attempt.exit_code == 0:
                text = _read_output(output) if self.store_notice else None
                message = attempt.result_text if text is None else text
                return _ended(name, True, JOB_COMPLETE), PodResult(POD_SUCCEEDED, 0, "Completed", message)
            if attempt.timed_out:
                # As on a cluster: the deadline kills the pod, the Job's message says why.
                return _ended(name, False, DEADLINE_EXCEEDED, f"activeDeadlineSeconds ({deadline_s}s) exceeded"), None
            # As the Job controller applies the rendered podFailurePolicy (exit codes; no pod
            # conditions here): FailJob ends it now (the final exit code), Ignore retries uncounted.
            action = action_for(policy, main, attempt.exit_code) if attempt.exit_code is not None else None
            if action == "FailJob":
                return _ended(name, False, "PodFailurePolicy", failed_pods=counted + 1), PodResult(
                    POD_FAILED, attempt.exit_code, "Error", attempt.result_text or attempt.log_tail
                )
            if action != "Ignore":
                counted += 1
            if n >= MAX_LOCAL_ATTEMPTS:
                break
        assert attempt is not None
        # Locally "Error" when there were no retries: the process's own failure, not a limit.
        reason = "BackoffLimitExceeded" if limit else "Error"
        return _ended(name, False, reason, failed_pods=counted), PodResult(
            POD_FAILED, attempt.exit_code, "Error", attempt.result_text or attempt.log_tail
        )

    async def run(self) -> dict[str, Any]:
        """Step the shared core until it writes a final status; between steps, wait for any
        process to end (the only thing that changes anything locally)."""
        children = ChildIndex()
        running: dict[asyncio.Task[Ended], int | None] = {}  # None: reduce
        status: dict[str, Any] = {}
        try:
            while True:
                step = decide(self._world(children, status), time.time())
                status, final = self._execute(step, children, running, status)
                self.progress.update(self.agg, len(running))
                if final:
                    break
                if not running:
                    raise LocalRunError(f"the run cannot progress (status: {status.get('message', '')})")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._observe(children, running.pop(task), *task.result())
        finally:
            self._kill_all()
        self.progress.update(self.agg, 0, final=True)
        for n in sorted(self.notices):
            _notice(self.stream, n)
        return status

    def _world(self, children: ChildIndex, status: dict[str, Any]) -> World:
        return World(
            spec=self.spec,
            plan=self.subtasks,
            children=children,
            outcomes=self.agg,
            previous=status,
            generation=self.workload.metadata.generation,
        )

    def _execute(
        self,
        step: Step,
        children: ChildIndex,
        running: dict[asyncio.Task[Ended], int | None],
        status: dict[str, Any],
    ) -> tuple[dict[str, Any], bool]:
        """Carry out a step with processes. Returns the status and whether it is final.
        Suspending, TTLs and events have no local meaning and are skipped."""
        final = False
        for action in step.actions:
            match action:
                case RecordOutcomes(outcomes):
                    for o in outcomes:
                        self.agg.record(o)
                case ReleaseJobs(jobs):
                    for index, _, _ in jobs:
                        children.release(index)
                case CreateJobs(indices, resume_at):
                    children.advance(resume_at)
                    for i in indices:
                        job = self.jobs[i]
                        children.jobs[i] = JobState(name=job["metadata"]["name"])
                        running[asyncio.create_task(self._run_job(job, str(i), {}))] = i
                case StartReduce():
                    running[asyncio.create_task(self._run_reduce())] = None
                    children.reduce_job = JobState(name="reduce")
                case WriteStatus(new_status, is_final):
                    status, final = new_status, is_final
        return status, final

    async def _run_reduce(self) -> Ended:
        path = self.tmp / "results.json"
        path.write_text(json.dumps(self.agg.reduce_input()))
        job = render_reduce_job(self.owner, self.spec, "local", "results.json")
        return await self._run_job(job, "reduce", {"APWA_RESULTS_PATH": str(path)})

    @staticmethod
    def _observe(children: ChildIndex, index: int | None, job: JobState, pod: PodResult | None) -> None:
        if index is None:
            children.reduce_job, children.reduce_pod = job, pod
            return
        children.jobs[index] = job
        if pod is not None:
            children.pods[index] = pod

    def _kill_all(self) -> None:
        for p in list(self.procs):
            _kill(p)


# Small local files: reading them inline costs less than a thread hop.
def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _read_outputs(result: Path, log: Path) -> tuple[str, str]:
    """The result file's text, and the log's tail as FallbackToLogsOnError would keep it."""
    raw = log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
    tail = "\n".join(raw.splitlines()[-LOG_TAIL_LINES:])
    return (result.read_text(errors="replace") if result.exists() else ""), tail


def _ended(name: str, succeeded: bool, reason: str, message: str = "", failed_pods: int = 0) -> JobState:
    return JobState(
        name=name, finished=True, succeeded=succeeded, reason=reason, message=message, failed_pods=failed_pods
    )


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_local(
    workload: ParallelWorkload,
    subtasks: list[Subtask],
    *,
    stream: TextIO = sys.stderr,
    progress: bool = True,
    on_runner: Callable[[LocalRunner], None] | None = None,
) -> dict[str, Any]:
    runner = LocalRunner(workload, subtasks, stream=stream, progress=progress)
    if on_runner:
        on_runner(runner)
    try:
        return asyncio.run(runner.run())
    except KeyboardInterrupt:
        # Last line of defence: a process whose task never got to its own cleanup.
        for proc in runner.spawned:
            if proc.returncode is None:
                _kill(proc)
        raise
