"""Every guarantee id of docs/isolation.md has passed, in this session, a guarded and a control case.

Runs after every other test of the session (conftest.py moves it last) and reads their outcomes.
It needs the real cluster like the others: where that tier is skipped (not root, outside CI), so
is this check.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ID = re.compile(r"\bISO-[A-Z]+-\d{2}\b")


def documented_ids() -> list[str]:
    return sorted(set(ID.findall((REPO / "docs" / "isolation.md").read_text())))


def test_the_document_names_guarantees() -> None:
    assert len(documented_ids()) >= 10, documented_ids()


def test_every_documented_guarantee_passed_with_a_control(
    real_cluster: None, outcomes: dict[tuple[str, str], list[str]]
) -> None:
    missing = [
        f"{iso} {case}"
        for iso in documented_ids()
        for case in ("guarded", "control")
        if not outcomes.get((iso, case)) or any(o != "passed" for o in outcomes[(iso, case)])
    ]
    assert missing == [], f"documented guarantees without a passed case of that kind in this run: {missing}"
