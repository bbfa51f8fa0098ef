"""Real work for the examples: count files, lines and words of a source tree, sharded.

    apwa-example-wordcount shard    # one subtask: every APWA_COUNT-th file from APWA_ITEM's shard
    apwa-example-wordcount reduce   # the reduce step: sums the shards' counts

The tree is WORDCOUNT_ROOT (default: the current directory); files are those git tracks when
it is a git checkout, otherwise every regular file outside hidden directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from apwa import worker


def list_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True, timeout=60
        ).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root)
            files += [str(rel / f) for f in filenames]
    return sorted(files)


def count_shard(root: Path, shard: int, shards: int) -> dict[str, int]:
    totals = {"files": 0, "lines": 0, "words": 0, "bytes": 0}
    for name in list_files(root)[shard::shards]:
        path = root / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        totals["files"] += 1
        totals["bytes"] += len(data)
        totals["lines"] += data.count(b"\n")
        totals["words"] += len(data.split())
    return totals


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode = argv[0] if argv else "shard"
    if mode == "shard":
        item = worker.item()
        root = Path(os.environ.get("WORDCOUNT_ROOT", "."))
        worker.emit(count_shard(root, int(item["shard"]), int(item["count"])))
    elif mode == "reduce":
        data = worker.results()
        totals = {"files": 0, "lines": 0, "words": 0, "bytes": 0}
        for r in data["results"]:
            for k in totals:
                totals[k] += int(r["result"][k])
        totals["shards"] = len(data["results"])
        worker.emit(totals)
    else:
        print(f"usage: apwa-example-wordcount shard|reduce (got {mode!r})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
