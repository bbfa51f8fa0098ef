"""Top entries of a py-spy raw profile (collapsed stacks: `frame;frame;... count` per line).

    .venv/bin/python bench/profile_top.py bench/results/prof/operator-N10000-0.txt [--top 30]

Prints, per function (file:name, lines merged), its own samples (the leaf: where the time is
spent) and its inclusive samples (anywhere on the stack: what it causes), as shares of all
samples; with --idle, samples whose leaf is the event loop's wait (selectors) count too.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
IDLE = ("select (selectors.py", "poll (selectors.py", "_run_once (asyncio/base_events.py")


def key(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "operator/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m.group('name')}"


def parse(path: Path, idle: bool) -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [
            key(f) for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames:
            continue
        if not idle and ("selectors.py" in frames[-1] or frames[-1].endswith(":select")):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return own, incl, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--idle", action="store_true", help="count the event loop's idle wait too")
    args = ap.parse_args()
    own, incl, total = parse(args.profile, args.idle)
    print(f"{args.profile}: {total} busy samples")
    print(f"\n{'own %':>7}  function (leaf: where the time goes)")
    for name, n in own.most_common(args.top):
        print(f"{100 * n / total:7.1f}  {name}")
    print(f"\n{'incl %':>7}  function (anywhere on the stack)")
    for name, n in incl.most_common(args.top):
        print(f"{100 * n / total:7.1f}  {name}")


if __name__ == "__main__":
    main()
