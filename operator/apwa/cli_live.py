"""`apwa get | watch | describe | logs | retry`: workloads on the cluster, live.

rich draws the tables and the progress bar; what they show is computed in live.py. `watch` follows
the workload with a watch (one long request the API server pushes every change into, resumed from
the last resourceVersion), never by polling, and exits with the workload's outcome (live.WatchExit).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from apwa import GROUP, KIND, PLURAL, VERSION
from apwa.common.times import parse_iso
from apwa.live import (
    GET_COLUMNS,
    Counts,
    RateMeter,
    WatchExit,
    average_rate,
    duration,
    eta,
    get_row,
    latest_pod,
    next_attempt,
    outcome,
    phase_of,
)
from apwa.rendering import LABEL_INDEX, LABEL_ROLE, LABEL_UID

WATCH_CHUNK_SECONDS = 60  # one watch request's server-side timeout; the watch resumes after it
EVENTS_SHOWN = 20


class LiveError(Exception):
    """What stops a live command, said so that a person can act on it."""


@dataclass
class Cluster:
    api: Any  # kubernetes.client.ApiClient
    namespace: str

    @property
    def objects(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def plain(self, obj: Any) -> Any:
        """A client model as the JSON the API server sent."""
        return self.api.sanitize_for_serialization(obj)


def connect(args: argparse.Namespace) -> Cluster:
    from kubernetes import client, config

    try:
        config.load_kube_config(context=args.context)
        _, active = config.list_kube_config_contexts()
    except config.ConfigException as e:
        raise LiveError(f"no usable kubeconfig ({e}); set KUBECONFIG or pass --context") from None
    namespace = args.namespace or active["context"].get("namespace") or "default"
    return Cluster(client.ApiClient(), namespace)


def api_error(e: Any, what: str) -> LiveError:
    return LiveError(f"{what}: the API server answered {e.status} {e.reason}")


def read_workload(cl: Cluster, name: str) -> dict[str, Any]:
    from kubernetes import client

    try:
        body: dict[str, Any] = cl.objects.get_namespaced_custom_object(GROUP, VERSION, cl.namespace, PLURAL, name)
    except client.ApiException as e:
        if e.status == 404:
            raise LiveError(f"ParallelWorkload {name!r} not found in namespace {cl.namespace!r} (-n NS)") from None
        raise api_error(e, f"reading ParallelWorkload {name!r}") from None
    return body


def console() -> Console:
    """Wide enough for whole rows when the output is not a terminal (a pipe, a CI log)."""
    c = Console(highlight=False)
    return c if c.is_terminal else Console(highlight=False, width=200)


# ---- apwa get --------------------------------------------------------------------------------
def cmd_get(args: argparse.Namespace) -> int:
    from kubernetes import client

    cl = connect(args)
    try:
        if args.name:
            items = [read_workload(cl, args.name)]
        elif args.all_namespaces:
            items = cl.objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        else:
            items = cl.objects.list_namespaced_custom_object(GROUP, VERSION, cl.namespace, PLURAL)["items"]
    except client.ApiException as e:
        raise api_error(e, "listing ParallelWorkloads") from None
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {cl.namespace!r}"
        print(f"No ParallelWorkloads found in {where}.", file=sys.stderr)
        return 0
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for col in (("NAMESPACE",) if args.all_namespaces else ()) + GET_COLUMNS:
        table.add_column(col, no_wrap=True)
    now = time.time()
    for w in sorted(items, key=lambda w: (w["metadata"]["namespace"], w["metadata"]["name"])):
        row = get_row(w, now)
        table.add_row(*((w["metadata"]["namespace"],) if args.all_namespaces else ()), *row)
    console().print(table)
    return 0


# ---- apwa watch ------------------------------------------------------------------------------
class Bar:
    """The progress bar of one workload: finished / total, the counts, the rate and the ETA."""

    def __init__(self, name: str, out: Console) -> None:
        self.meter = RateMeter()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=out,
            refresh_per_second=4,
        )
        self.task: TaskID = self.progress.add_task(name, total=None, counts="", rate="", eta="-")

    def show(self, workload: dict[str, Any]) -> None:
        c, now = Counts.of(workload), time.time()
        self.meter.add(now, c.finished)
        rate = self.meter.rate() or average_rate(workload, now)
        counts = (
            f"{phase_of(workload)}  [green]succeeded {c.succeeded}[/]  [red]failed {c.failed}[/]  "
            f"[yellow]active {c.active}[/]"
        )
        self.progress.update(
            self.task,
            total=c.total or None,
            completed=c.finished,
            counts=counts,
            rate=f"{rate:.1f}/s" if rate else "-/s",
            eta=duration(eta(c.total - c.finished, rate)),
        )


def cmd_watch(args: argparse.Namespace) -> int:
    out = console()
    try:
        code, last = follow(connect(args), args.name, args.timeout, out)
    except LiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(WatchExit.ERROR)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return int(WatchExit.INTERRUPTED)
    status = last.get("status") or {}
    c = Counts.of(last)
    verdict = "timed out waiting" if code == WatchExit.TIMEOUT else phase_of(last)
    out.print(
        f"{args.name}: {verdict}: {c.succeeded}/{c.total} succeeded, {c.failed} failed, {c.active} active"
        + (f" ({status['message']})" if status.get("message") else ""),
        markup=False,
    )
    return int(code)


def follow(cl: Cluster, name: str, timeout: float | None, out: Console) -> tuple[WatchExit, dict[str, Any]]:
    """Show the workload's progress until it finishes, is deleted, or `timeout` seconds pass."""
    body = read_workload(cl, name)
    deadline = time.monotonic() + timeout if timeout else None
    bar = Bar(name, out)
    with bar.progress:
        bar.show(body)
        while (code := outcome(body)) is None:
            left = deadline - time.monotonic() if deadline is not None else WATCH_CHUNK_SECONDS
            if left <= 0:
                return WatchExit.TIMEOUT, body
            body = _watch_once(cl, name, body, bar, min(left, WATCH_CHUNK_SECONDS), deadline)
    return code, body


def _watch_once(
    cl: Cluster, name: str, body: dict[str, Any], bar: Bar, seconds: float, deadline: float | None
) -> dict[str, Any]:
    """One watch request from the last resourceVersion; returns the newest body it saw."""
    from kubernetes import client, watch

    w = watch.Watch()
    try:
        for event in w.stream(
            cl.objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            cl.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=body["metadata"]["resourceVersion"],
            timeout_seconds=max(int(seconds), 1),
        ):
            if event["type"] == "DELETED":
                raise LiveError(f"ParallelWorkload {name!r} was deleted before it finished")
            body = event["object"]
            bar.show(body)
            if outcome(body) is not None or (deadline is not None and time.monotonic() >= deadline):
                break
    except client.ApiException as e:
        if e.status != 410:
            raise api_error(e, f"watching ParallelWorkload {name!r}") from None
        body = read_workload(cl, name)  # the resourceVersion expired: read again, watch from there
        bar.show(body)
    finally:
        w.stop()
    return body


# ---- apwa describe ---------------------------------------------------------------------------
def decomposition_summary(spec: dict[str, Any]) -> str:
    d = spec.get("decomposition") or {}
    if "items" in d:
        return f"items: {len(d['items'])}"
    if "range" in d:
        r = d["range"]
        return f"range: {r.get('start', 0)}..{r['end']} step {r.get('step', 1)}"
    if "shards" in d:
        return f"shards: {d['shards']['count']}"
    if "matrix" in d:
        return "matrix: " + " x ".join(f"{k}[{len(v)}]" for k, v in d["matrix"].items())
    if "configMapRef" in d:
        return f"configMapRef: {d['configMapRef']['name']}/{d['configMapRef']['key']}"
    if "planner" in d:
        return f"planner: {d['planner'].get('type', 'HTTP')}"
    if "objects" in d:
        return f"objects: prefix {d['objects'].get('prefix', '')!r}"
    return "-"


def _spec_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    templates = ", ".join(
        f"{n} (backoffLimit {t.get('backoffLimit', 0)}"
        + (f", deadline {t['activeDeadlineSeconds']}s" if t.get("activeDeadlineSeconds") else "")
        + ")"
        for n, t in sorted((spec.get("templates") or {}).items())
    )
    reduce = ((spec.get("results") or {}).get("reduce") or {}).get("template")
    rows = [
        ("Decomposition", decomposition_summary(spec)),
        ("Parallelism", str(spec.get("parallelism", 10))),
        ("Failure policy", _json(spec.get("failurePolicy")) or "no failure tolerated"),
        ("Templates", templates),
        ("Reduce", reduce or "-"),
        ("Store", ((spec.get("store") or {}).get("s3") or {}).get("bucket") or "ConfigMaps"),
        ("Suspend", str(bool(spec.get("suspend")))),
    ]
    if spec.get("retry"):
        rows.append(("Retry requested", _json(spec["retry"])))
    return rows


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(", ", ": ")) if value else ""


def _status_rows(status: dict[str, Any], now: float) -> list[tuple[str, str]]:
    c = status.get("counts") or {}
    start, end = parse_iso(status.get("startTime")), parse_iso(status.get("completionTime"))
    took = ((end or now) - start) if start else None
    return [
        ("Phase", str(status.get("phase", "Pending"))),
        ("Counts", "  ".join(f"{k} {c.get(k, 0)}" for k in ("total", "pending", "active", "succeeded", "failed"))),
        ("Started", f"{status.get('startTime', '-')}"),
        ("Finished", f"{status.get('completionTime', '-')}" + (f" (took {duration(took)})" if end else "")),
        ("Message", str(status.get("message", ""))),
    ]


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.title, t.title_justify, t.title_style = title, "left", "bold"
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for k, v in rows:
        t.add_row(k + ":", v)
    return t


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", box=None, header_style="bold", pad_edge=False)
    for col in columns:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def _failures(status: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (str(f["index"]), f.get("job", ""), f.get("reason", ""), str(f.get("exitCode", "")), f.get("message", ""))
        for f in status.get("failedSubtasks") or []
    ]


def _retries(status: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for r in (status.get("retry") or {}).get("history") or []:
        firsts = ", ".join(
            f"{f['index']} ({f.get('reason', '')}: {f.get('message', '')[:60]})" for f in r.get("failures") or []
        )
        rows.append((str(r["attempt"]), r.get("time", ""), str(r.get("retried", 0)), firsts))
    return rows


def _events(cl: Cluster, body: dict[str, Any], now: float) -> list[tuple[str, ...]]:
    meta = body["metadata"]
    selector = f"involvedObject.name={meta['name']},involvedObject.kind={KIND}"
    events = [cl.plain(e) for e in cl.core.list_namespaced_event(cl.namespace, field_selector=selector).items]
    events = [e for e in events if (e.get("involvedObject") or {}).get("uid") in (None, meta.get("uid"))]
    events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [
        (
            e.get("type", ""),
            e.get("reason", ""),
            duration(now - (parse_iso(e.get("lastTimestamp") or e.get("eventTime")) or now)),
            e.get("message", ""),
        )
        for e in events[-EVENTS_SHOWN:]
    ]


def cmd_describe(args: argparse.Namespace) -> int:
    cl = connect(args)
    body = read_workload(cl, args.name)
    spec, status, now = body.get("spec") or {}, body.get("status") or {}, time.time()
    out = console()
    out.print(f"[bold]Name:[/] {args.name}    [bold]Namespace:[/] {cl.namespace}")
    out.print(_pairs("Spec", _spec_rows(spec)))
    out.print(_pairs("Status", _status_rows(status, now)))
    conditions = [
        (
            c["type"],
            c["status"],
            c.get("reason", ""),
            duration(now - (parse_iso(c.get("lastTransitionTime")) or now)),
            c.get("message", ""),
        )
        for c in status.get("conditions") or []
    ]
    out.print(_table("Conditions", ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), conditions))
    failed = int((status.get("counts") or {}).get("failed") or 0)
    rows = _failures(status)
    title = f"Failed subtasks ({len(rows)} of {failed} shown; apwa results {args.name} lists all)" if rows else ""
    if rows:
        out.print(_table(title, ("INDEX", "JOB", "REASON", "EXIT", "MESSAGE"), rows))
    if retries := _retries(status):
        out.print(_table("Retries", ("ATTEMPT", "TIME", "RETRIED", "FAILURES IT RETRIED"), retries))
    out.print(_table("Events", ("TYPE", "REASON", "AGE", "MESSAGE"), _events(cl, body, now)))
    return 0


# ---- apwa logs -------------------------------------------------------------------------------
def cmd_logs(args: argparse.Namespace) -> int:
    from kubernetes import client

    cl = connect(args)
    body = read_workload(cl, args.name)
    selector = f"{LABEL_UID}={body['metadata']['uid']},{LABEL_ROLE}=subtask,{LABEL_INDEX}={args.index}"
    pods = [cl.plain(p) for p in cl.core.list_namespaced_pod(cl.namespace, label_selector=selector).items]
    pod = latest_pod(pods, args.attempt)
    if pod is None:
        which = (
            f"attempt {args.attempt} of subtask {args.index}" if args.attempt is not None else f"subtask {args.index}"
        )
        raise LiveError(
            f"{which} of {args.name!r} has no pod: not started yet, or removed with its Job "
            "(ttlSecondsAfterFinished of its template)"
        )
    name = pod["metadata"]["name"]
    container = args.container or pod["spec"]["containers"][0]["name"]
    print(f"# pod {name}, container {container}", file=sys.stderr)
    try:
        if args.follow:
            resp = cl.core.read_namespaced_pod_log(
                name, cl.namespace, container=container, follow=True, _preload_content=False
            )
            for chunk in resp.stream():
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            return 0
        text = cl.core.read_namespaced_pod_log(name, cl.namespace, container=container, tail_lines=args.tail)
    except client.ApiException as e:
        raise api_error(e, f"reading the logs of pod {name}") from None
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


# ---- apwa retry ------------------------------------------------------------------------------
def cmd_retry(args: argparse.Namespace) -> int:
    from kubernetes import client

    cl = connect(args)
    body = read_workload(cl, args.name)
    attempt = next_attempt(body)
    if attempt is None:
        observed = body["status"]["retry"]["attempt"]
        print(
            f"retry {observed} of {cl.namespace}/{args.name} is still running: nothing new requested "
            f"(apwa watch {args.name}, then apwa retry again if subtasks still fail)"
        )
        return 0
    indices = sorted(set(args.index)) if args.index else None
    patch = {"spec": {"retry": {"attempt": attempt, "indices": indices}}}
    try:
        cl.objects.patch_namespaced_custom_object(GROUP, VERSION, cl.namespace, PLURAL, args.name, patch)
    except client.ApiException as e:
        raise api_error(e, f"requesting a retry of {args.name!r}") from None
    failed = int(((body.get("status") or {}).get("counts") or {}).get("failed") or 0)
    which = f"subtasks {', '.join(map(str, indices))}" if indices else f"the {failed} failed subtasks"
    print(f"retry {attempt} of {cl.namespace}/{args.name} requested: {which} run again (apwa watch {args.name})")
    return 0


# ---- the parsers -----------------------------------------------------------------------------
def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    p.add_argument("--context", help="kubeconfig context")


def register(sub: Any) -> None:
    g = sub.add_parser("get", help="list workloads on the cluster: phase, progress, failures, ETA")
    g.add_argument("name", nargs="?", help="one workload (default: all in the namespace)")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    _cluster_args(g)
    g.set_defaults(func=cmd_get)

    w = sub.add_parser(
        "watch",
        help="a live progress bar until the workload finishes; exit 0 Succeeded, 1 Failed, 2 error, "
        "124 --timeout, 130 interrupted",
    )
    w.add_argument("name")
    w.add_argument("--timeout", type=float, help="give up after this many seconds (exit 124)")
    _cluster_args(w)
    w.set_defaults(func=cmd_watch)

    d = sub.add_parser("describe", help="spec, status, conditions, failed subtasks, retries and events")
    d.add_argument("name")
    _cluster_args(d)
    d.set_defaults(func=cmd_describe)

    lg = sub.add_parser("logs", help="the logs of one subtask's pod (its latest attempt unless --attempt)")
    lg.add_argument("name")
    lg.add_argument("--index", type=int, required=True, help="the subtask")
    lg.add_argument("--attempt", type=int, help="a retry's attempt (0: the first run); default: the latest")
    lg.add_argument("-c", "--container", help="default: the pod's first (main) container")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("--tail", type=int, help="only the last lines")
    _cluster_args(lg)
    lg.set_defaults(func=cmd_logs)

    r = sub.add_parser("retry", help="run the failed subtasks of a workload again (sets spec.retry)")
    r.add_argument("name")
    r.add_argument(
        "--index", type=int, action="append", help="only this failed subtask (repeatable); also runs a final failure"
    )
    _cluster_args(r)
    r.set_defaults(func=cmd_retry)
