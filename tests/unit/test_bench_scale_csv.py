"""bench/scale.py --from-csv: runs written by one invocation read back unchanged by another, so the
100,000 runs (an hour per side) join the 1,000 and 10,000 ones in one table and one plot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # bench/ is not a package: its scripts import each other by path


def test_runs_read_back_from_csv_are_the_runs_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale, "RESULTS", tmp_path)
    runs = [
        scale.Run(10_000, 0, "packed", 0.4, 285.8, 35.0, 7.3, 1.08, 0.0, 97.9, 54.5, 2196, 3.7e8, 40.1, 861.0),
        scale.Run(100_000, 0, "indexed", complete_s=3600.5, subtasks_per_s=27.8),
    ]
    first = scale.write(runs[:1], "a")
    second = scale.write(runs[1:], "b")
    assert scale.read([first, second]) == runs


def test_the_table_pairs_sides_of_the_same_size_and_repeat(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        scale.Run(10_000, rep, side, complete_s=s)
        for rep, (p, i) in enumerate([(300.0, 200.0), (330.0, 300.0), (280.0, 250.0)])
        for side, s in (("packed", p), ("indexed", i))
    ]
    scale.summary(runs)
    out = capsys.readouterr().out
    assert "packed/indexed  Complete: median 1.12 (1.10..1.50, 3 pairs)" in out
    assert "  10000 packed          3" in out
