"""The test environment's S3 server (hack/s3.sh: versitygw with its posix backend), as tests see it.

``hack/s3.sh start`` runs it (idempotent; builds it on first use) and ``hack/s3.sh env`` prints one
export line; ``start()`` does both and returns the settings. The ``s3_server`` fixture of
tests/conftest.py is built on it. The credentials are fixed test-only keys of a throwaway server.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
S3_SH = ROOT / "hack" / "s3.sh"
START_TIMEOUT_S = 900  # a first start builds versitygw: about 2.5 min on 2 cores


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server answers and how to sign for it.

    ``endpoint`` is for this machine (http://127.0.0.1:PORT); ``node_endpoint`` is the same server
    as pods on the real node reach it (http://10.254.0.1:PORT; that address exists only while the
    real node is up). Path-style addressing: the bucket is the first path segment.
    """

    endpoint: str
    node_endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str


ENV_FIELDS = {
    "APWA_S3_ENDPOINT": "endpoint",
    "APWA_S3_NODE_ENDPOINT": "node_endpoint",
    "APWA_S3_ACCESS_KEY": "access_key",
    "APWA_S3_SECRET_KEY": "secret_key",
    "APWA_S3_BUCKET": "bucket",
    "APWA_S3_REGION": "region",
}


def parse_env_line(line: str) -> S3Server:
    """Parse ``export APWA_S3_ENDPOINT=... APWA_S3_REGION=...`` as printed by ``hack/s3.sh env``
    (also the tail of hack/cluster.sh's export line: other variables are ignored)."""
    words = shlex.split(line)
    if not words or words[0] != "export":
        raise ValueError(f"not an export line: {line!r}")
    values = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    missing = [name for name in ENV_FIELDS if not values.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing from {line!r}")
    return S3Server(**{field: values[name] for name, field in ENV_FIELDS.items()})


def _s3_sh(command: str, timeout: float) -> str:
    proc = subprocess.run(["bash", str(S3_SH), command], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise RuntimeError(f"hack/s3.sh {command} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def start() -> S3Server:
    """Start (or reuse) the server of this cluster (APWA_CLUSTER_NAME) and return its settings."""
    _s3_sh("start", START_TIMEOUT_S)
    return parse_env_line(_s3_sh("env", 30).strip().splitlines()[-1])
