"""S3 client libraries for an asyncio operator and a small worker image, measured side by side
against the test environment's S3 server (hack/s3.sh: versitygw, posix backend, on this machine).

Per candidate: the install size (du of what `pip install` added to a fresh venv's site-packages,
and how many distributions); the cold import (`python -c 'import ...'` minus `python -c pass`,
median of 5 fresh processes: wall time, and CPU time, which other load on the machine hardly moves)
and the CPU of import + building a client; then in one fresh process: 1,000 PUTs of 1 KiB (32 in
flight: 32 asyncio workers, or a pool of 32 threads for sync clients) with the client process's CPU
time and RSS after them, one 64 MiB PUT (multipart where the client does it by itself) and its GET.
Runs interleave (A B C A B C ...) and repeat; the table shows the median and the spread.

    python bench/s3_clients.py                    # venvs under ~/.cache/apwa/bench-venvs (reused)
    python bench/s3_clients.py --repeat 5 --clients obstore,boto3
    python bench/s3_clients.py --python obstore=/path/to/venv/bin/python   # an existing interpreter

The endpoint and keys come from `hack/s3.sh env` (the server is started when it does not run);
`APWA_CLUSTER_NAME=s3bench python bench/s3_clients.py` uses a server of its own, on its own port.
Leaves the 1 KiB objects under bench-s3-clients/ in the bucket (hack/s3.sh stop + the state dir).
This file only imports the standard library at the top: it is also the worker (`--worker NAME`)
that each candidate's own interpreter runs. Results and the choice: docs/s3-clients.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENVS = Path(os.environ.get("APWA_CACHE_DIR", Path.home() / ".cache" / "apwa")) / "bench-venvs"
SMALL, BIG = 1024, 64 * 1024 * 1024
IN_FLIGHT = 32


@dataclass(frozen=True)
class Candidate:
    requirement: str  # what pip installs (pinned: the numbers belong to these versions)
    imports: str  # what a program using it imports
    client: str  # builds a client object offline (after `imports`); the import+client column


CANDIDATES = {
    "obstore": Candidate(
        "obstore==0.12.1",
        "import obstore; from obstore.store import S3Store",
        "S3Store('b', endpoint='http://127.0.0.1:1', region='us-east-1', access_key_id='a', "
        "secret_access_key='s', client_options={'allow_http': True})",
    ),
    "aiobotocore": Candidate(
        "aiobotocore==3.10.0",
        "import asyncio; from aiobotocore.session import get_session",
        "asyncio.run(get_session().create_client('s3', endpoint_url='http://127.0.0.1:1', region_name='us-east-1', "
        "aws_access_key_id='a', aws_secret_access_key='s').__aenter__())",
    ),
    "boto3": Candidate(
        "boto3==1.44.5",
        "import boto3",
        "boto3.client('s3', endpoint_url='http://127.0.0.1:1', region_name='us-east-1', "
        "aws_access_key_id='a', aws_secret_access_key='s')",
    ),
    "opendal": Candidate(
        "opendal==0.47.12",
        "import opendal",
        "opendal.AsyncOperator('s3', bucket='b', endpoint='http://127.0.0.1:1', region='us-east-1', "
        "access_key_id='a', secret_access_key='s')",
    ),
    "miniopy-async": Candidate(
        "miniopy-async==1.23.6",
        "from miniopy_async import Minio",
        "Minio('127.0.0.1:1', access_key='a', secret_key='s', secure=False, region='us-east-1')",
    ),
}


# ---------------------------------------------------------------- worker side (candidate's python)


def _settings() -> dict[str, str]:
    return {k: os.environ[k] for k in os.environ if k.startswith("APWA_S3_")}


@dataclass
class Ops:
    """One client's calls; `put_big` and `get` also serve the 64 MiB object."""

    put: Callable
    put_big: Callable
    get: Callable
    delete: Callable


def _check(got: bytes, big: bytes) -> None:
    assert len(got) == BIG and got[:64] == big[:64] and got[-64:] == big[-64:], "64 MiB object read back wrong"


def _figures(t: list[float], cpu: float) -> dict[str, float]:
    return {
        "puts_per_s": 1000 / (t[1] - t[0]),
        "put_cpu_ms": cpu * 1000,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # before the 64 MiB buffers
        "put64_s": 0.0,
        "get64_s": 0.0,
    }


def _timed_async(prefix: str, ops: AbstractAsyncContextManager[Ops]) -> dict[str, float]:
    """1,000 small PUTs through IN_FLIGHT asyncio workers, then the 64 MiB PUT and GET."""
    import asyncio

    async def run() -> dict[str, float]:
        body = os.urandom(SMALL)
        async with ops as o:
            await o.put(f"{prefix}/warmup", body)
            keys = iter(range(1000))

            async def worker() -> None:
                for i in keys:
                    await o.put(f"{prefix}/small/{i:04d}", body)

            c0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            res = _figures([t0, time.perf_counter()], time.process_time() - c0)
            big = os.urandom(BIG)
            t2 = time.perf_counter()
            await o.put_big(f"{prefix}/big", big)
            t3 = time.perf_counter()
            got = await o.get(f"{prefix}/big")
            res["put64_s"], res["get64_s"] = t3 - t2, time.perf_counter() - t3
            _check(got, big)
            await o.delete(f"{prefix}/big")
        return res

    return asyncio.run(run())


def _timed_threads(prefix: str, o: Ops) -> dict[str, float]:
    """The same with a pool of IN_FLIGHT threads (sync clients)."""
    from concurrent.futures import ThreadPoolExecutor

    body = os.urandom(SMALL)
    o.put(f"{prefix}/warmup", body)
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        c0, t0 = time.process_time(), time.perf_counter()
        list(pool.map(lambda i: o.put(f"{prefix}/small/{i:04d}", body), range(1000)))
        res = _figures([t0, time.perf_counter()], time.process_time() - c0)
    big = os.urandom(BIG)
    t2 = time.perf_counter()
    o.put_big(f"{prefix}/big", big)
    t3 = time.perf_counter()
    got = o.get(f"{prefix}/big")
    res["put64_s"], res["get64_s"] = t3 - t2, time.perf_counter() - t3
    _check(got, big)
    o.delete(f"{prefix}/big")
    return res


@asynccontextmanager
async def _ready(ops: Ops) -> AsyncIterator[Ops]:
    yield ops


def _run_obstore(s: dict[str, str], prefix: str) -> dict[str, float]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        s["APWA_S3_BUCKET"],
        endpoint=s["APWA_S3_ENDPOINT"],
        region=s["APWA_S3_REGION"],
        access_key_id=s["APWA_S3_ACCESS_KEY"],
        secret_access_key=s["APWA_S3_SECRET_KEY"],
        client_options={"allow_http": True},
    )

    async def get(key: str) -> bytes:
        return (await (await obstore.get_async(store, key)).bytes_async()).to_bytes()

    async def put(key: str, body: bytes) -> None:
        await obstore.put_async(store, key, body)  # > 5 MiB: multipart, 12 parts in flight

    return _timed_async(prefix, _ready(Ops(put, put, get, lambda key: obstore.delete_async(store, key))))


def _run_aiobotocore(s: dict[str, str], prefix: str) -> dict[str, float]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    bucket = s["APWA_S3_BUCKET"]

    @asynccontextmanager
    async def ops() -> AsyncIterator[Ops]:
        async with get_session().create_client(
            "s3",
            endpoint_url=s["APWA_S3_ENDPOINT"],
            region_name=s["APWA_S3_REGION"],
            aws_access_key_id=s["APWA_S3_ACCESS_KEY"],
            aws_secret_access_key=s["APWA_S3_SECRET_KEY"],
            config=AioConfig(max_pool_connections=IN_FLIGHT),
        ) as c:

            async def put(key: str, body: bytes) -> None:  # no transfer manager: one PUT, also for 64 MiB
                await c.put_object(Bucket=bucket, Key=key, Body=body)

            async def get(key: str) -> bytes:
                resp = await c.get_object(Bucket=bucket, Key=key)
                async with resp["Body"] as stream:
                    return await stream.read()

            yield Ops(put, put, get, lambda key: c.delete_object(Bucket=bucket, Key=key))

    return _timed_async(prefix, ops())


def _run_boto3(s: dict[str, str], prefix: str) -> dict[str, float]:
    import io

    import boto3
    from botocore.config import Config

    bucket = s["APWA_S3_BUCKET"]
    c = boto3.client(
        "s3",
        endpoint_url=s["APWA_S3_ENDPOINT"],
        region_name=s["APWA_S3_REGION"],
        aws_access_key_id=s["APWA_S3_ACCESS_KEY"],
        aws_secret_access_key=s["APWA_S3_SECRET_KEY"],
        config=Config(max_pool_connections=IN_FLIGHT),
    )

    def put_big(key: str, body: bytes) -> None:  # s3transfer: 8 MiB parts, 10 threads
        c.upload_fileobj(io.BytesIO(body), bucket, key)

    def get_big(key: str) -> bytes:  # s3transfer: concurrent ranged GETs
        out = io.BytesIO()
        c.download_fileobj(bucket, key, out)
        return out.getvalue()

    def put(key: str, body: bytes) -> None:
        c.put_object(Bucket=bucket, Key=key, Body=body)

    return _timed_threads(prefix, Ops(put, put_big, get_big, lambda key: c.delete_object(Bucket=bucket, Key=key)))


def _run_opendal(s: dict[str, str], prefix: str) -> dict[str, float]:
    import opendal

    op = opendal.AsyncOperator(
        "s3",
        bucket=s["APWA_S3_BUCKET"],
        endpoint=s["APWA_S3_ENDPOINT"],
        region=s["APWA_S3_REGION"],
        access_key_id=s["APWA_S3_ACCESS_KEY"],
        secret_access_key=s["APWA_S3_SECRET_KEY"],
    )

    async def get(key: str) -> bytes:
        return bytes(await op.read(key))

    return _timed_async(prefix, _ready(Ops(op.write, op.write, get, op.delete)))


def _run_miniopy_async(s: dict[str, str], prefix: str) -> dict[str, float]:
    import io
    from urllib.parse import urlsplit

    from miniopy_async import Minio

    bucket = s["APWA_S3_BUCKET"]
    c = Minio(
        urlsplit(s["APWA_S3_ENDPOINT"]).netloc,
        access_key=s["APWA_S3_ACCESS_KEY"],
        secret_key=s["APWA_S3_SECRET_KEY"],
        secure=False,
        region=s["APWA_S3_REGION"],
    )

    async def put(key: str, body: bytes) -> None:  # > part size: multipart
        await c.put_object(bucket, key, io.BytesIO(body), len(body))

    async def get(key: str) -> bytes:
        resp = await c.get_object(bucket, key)
        try:
            return await resp.read()
        finally:
            resp.close()

    return _timed_async(prefix, _ready(Ops(put, put, get, lambda key: c.remove_object(bucket, key))))


RUNNERS = {
    "obstore": _run_obstore,
    "aiobotocore": _run_aiobotocore,
    "boto3": _run_boto3,
    "opendal": _run_opendal,
    "miniopy-async": _run_miniopy_async,
}


def worker(name: str) -> None:
    prefix = f"bench-s3-clients/{name}/{uuid.uuid4().hex[:8]}"
    print(json.dumps(RUNNERS[name](_settings(), prefix)))


# ---------------------------------------------------------------- driver side


def s3_env() -> dict[str, str]:
    sh = str(REPO / "hack" / "s3.sh")
    subprocess.run(["bash", sh, "start"], check=True, timeout=900, stdout=subprocess.DEVNULL)
    line = subprocess.run(["bash", sh, "env"], check=True, capture_output=True, text=True).stdout.strip()
    return dict(w.split("=", 1) for w in shlex.split(line)[1:])


def du_kib(path: Path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def site_packages(python: str) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def make_venv(name: str, cand: Candidate) -> tuple[str, dict]:
    """A fresh venv holding only `cand` (reused when its requirement did not change)."""
    d = VENVS / name
    info_file = d / "apwa-bench.json"
    python = str(d / "bin" / "python")
    if info_file.is_file() and json.loads(info_file.read_text()).get("requirement") == cand.requirement:
        return python, json.loads(info_file.read_text())
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(d)], check=True)
    site = site_packages(python)
    freeze = [python, "-m", "pip", "freeze", "--all"]
    before_kib = du_kib(site)
    before = set(subprocess.run(freeze, capture_output=True, text=True, check=True).stdout.split())
    print(f"installing {cand.requirement} into {d}", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", cand.requirement], check=True)
    after = set(subprocess.run(freeze, capture_output=True, text=True, check=True).stdout.split())
    info = {
        "requirement": cand.requirement,
        "added_kib": du_kib(site) - before_kib,
        "added": sorted(after - before),
    }
    info_file.write_text(json.dumps(info, indent=1))
    return python, info


def process_ms(python: str, code: str, n: int = 5) -> tuple[float, float]:
    """Median wall and CPU (user + sys) milliseconds of `python -c code` in n fresh processes, after
    one untimed run. CPU time hardly moves when other work shares the machine; wall time does."""
    subprocess.run([python, "-c", code], check=True)
    wall, cpu = [], []
    for _ in range(n):
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run([python, "-c", code], check=True)
        r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        wall.append((t1 - t0) * 1000)
        cpu.append((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def import_ms(python: str, cand: Candidate) -> dict[str, float]:
    """What importing the client (and building one) adds to a bare interpreter's start."""
    bare_wall, bare_cpu = process_ms(python, "pass")
    wall, cpu = process_ms(python, cand.imports)
    _, client_cpu = process_ms(python, f"{cand.imports}; {cand.client}")
    return {"import_ms": wall - bare_wall, "import_cpu_ms": cpu - bare_cpu, "client_cpu_ms": client_cpu - bare_cpu}


def run_worker(python: str, name: str, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", name],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# (column, figure, format): every figure is shown as median (min-max) over the runs
COLUMNS = [
    ("import ms", "import_ms", ".0f"),
    ("import CPU ms", "import_cpu_ms", ".0f"),
    ("import + client CPU ms", "client_cpu_ms", ".0f"),
    ("1 KiB PUT/s, 32 in flight", "puts_per_s", ".0f"),
    ("client CPU ms / 1,000 PUTs", "put_cpu_ms", ".0f"),
    ("64 MiB PUT s", "put64_s", ".2f"),
    ("64 MiB GET s", "get64_s", ".2f"),
    ("RSS after PUTs MiB", "rss_mib", ".0f"),
]


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def table(names: list[str], info: dict[str, dict], runs: dict[str, list[dict[str, float]]]) -> str:
    head = ["client", "install MiB (dists)"] + [c for c, _, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        i = info[name]
        size = "-" if i["added_kib"] is None else f"{i['added_kib'] / 1024:.1f} ({len(i['added'])})"
        cells = [spread([r[key] for r in runs[name]], fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join([name, size, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default=",".join(CANDIDATES), help="comma-separated, from: " + ", ".join(CANDIDATES))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--python", action="append", default=[], metavar="NAME=PATH", help="use this interpreter")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)

    names = args.clients.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown client(s) {unknown}; known: {', '.join(CANDIDATES)}")
    given = dict(item.split("=", 1) for item in args.python)
    env = s3_env()
    pythons, info = {}, {}
    for name in names:
        if name in given:
            pythons[name], info[name] = given[name], {"added_kib": None, "added": []}
        else:
            pythons[name], info[name] = make_venv(name, CANDIDATES[name])
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.repeat):
        for name in names:  # interleaved: A B C A B C ...
            res = {**import_ms(pythons[name], CANDIDATES[name]), **run_worker(pythons[name], name, env)}
            runs[name].append(res)
            shown = "  ".join(f"{key}={res[key]:{fmt}}" for _, key, fmt in COLUMNS)
            print(f"run {r + 1} {name:14} {shown}", file=sys.stderr)

    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nS3 clients against versitygw at {env['APWA_S3_ENDPOINT']}; {args.repeat} interleaved runs,")
    print(f"median (min-max); {os.cpu_count()} CPUs, load average {load} (1/5/15 min) at the end\n")
    print(table(names, info, runs))
    for name in names:
        print(f"\n{name}: {' '.join(info[name]['added']) or '(given interpreter)'}")


if __name__ == "__main__":
    main()
