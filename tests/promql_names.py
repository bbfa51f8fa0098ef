"""The metric names (and label matchers) a PromQL expression uses, by a small tokenizer.

Not a PromQL parser: promtool checks the syntax (tests/integration/test_monitoring.py). This
only has to find every selector, in the subset of PromQL that dashboards and alert rules use,
and refuses what it does not understand (a `__name__` matcher) instead of guessing.

Steps: blank out string literals (label values, label_replace arguments, Grafana variables
inside them), Grafana's `$var`/`${var}`, range and subquery brackets, and the label lists of
by/without/on/ignoring/group_left/group_right. What is left is function names (followed by
"("), keywords, numbers, and metric names: the names are the identifiers that are neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE)
# An identifier that does not continue a number (1e9, 0x1f) or a name; an optional {matchers}.
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"inf", "nan", "atan2"}
)


@dataclass(frozen=True)
class Selector:
    metric: str
    labels: frozenset[str]  # label names its matchers use


def selectors(expr: str) -> list[Selector]:
    """Every metric selector of `expr`, in order, with the label names its matchers name."""
    if "__name__" in expr:
        raise ValueError(f"__name__ matchers are not understood here: {expr!r}")
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    found = []
    for m in _SELECTOR.finditer(text):
        name, matchers, call = m.groups()
        if call and not matchers:
            continue  # a function or an aggregation: sum(, rate(, histogram_quantile(
        if name.lower() in KEYWORDS:
            continue
        found.append(Selector(name, frozenset(_MATCHER_LABEL.findall(matchers or ""))))
    return found


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr)}


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*$")


def grafana_variable_selectors(query: str) -> list[Selector]:
    """The selectors of a Grafana Prometheus variable query: label_values(<selector>, label), or PromQL."""
    m = _LABEL_VALUES.match(query)
    if m is None:
        return selectors(query)
    return selectors(m.group(1))
