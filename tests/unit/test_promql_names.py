"""The PromQL tokenizer that the dashboard and alert checks rely on (tests/promql_names.py).

Each row is an expression shape that the dashboard or the alerts use, or a trap for a naive
tokenizer (function names, keywords, label lists, strings and durations that look like names).
"""

from __future__ import annotations

import pytest
from promql_names import Selector, grafana_variable_selectors, metric_names, selectors


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("up", {"up"}),
        ('absent(up{job="a-metrics",namespace="ops"} == 1)', {"up"}),
        ("sum(rate(apwa_subtasks_created_total[5m]))", {"apwa_subtasks_created_total"}),
        (
            'histogram_quantile(0.99, sum by (le) (rate(apwa_job_create_seconds_bucket{job=~"$j"}[$__rate_interval])))',
            {"apwa_job_create_seconds_bucket"},
        ),
        ("sum(rate(x_total[5m])) by (code, le) / on (job) group_left (instance) y", {"x_total", "y"}),
        ("a / ignoring(code) b unless c and d or e", {"a", "b", "c", "d", "e"}),
        (
            "time() - apwa_workload_last_progress_timestamp_seconds > 1800",
            {"apwa_workload_last_progress_timestamp_seconds"},
        ),
        ("count(x > 1e9) or vector(0) + 0x1f + Inf - NaN", {"x"}),
        ('label_replace(m, "dst", "$1", "src", "(sum|rate)")', {"m"}),
        ("max_over_time(rate(m[5m])[1h:1m]) offset 5m", {"m"}),
        ('a{code=~"5..", le!="+Inf"} > bool 0', {"a"}),
        ("m @ start()", {"m"}),
        ("rate(m:recorded:sum[${__range}])", {"m:recorded:sum"}),
        ("topk(3, sum without (pod) (m))", {"m"}),
    ],
    ids=[
        "bare",
        "absent-of-filter",
        "rate",
        "grafana-quantile",
        "by-after-and-group-left",
        "set-operators",
        "time-minus-gauge",
        "numbers-and-specials",
        "strings-with-names",
        "subquery-and-offset",
        "matchers-and-bool",
        "at-modifier",
        "recording-rule-name",
        "without",
    ],
)
def test_metric_names(expr: str, want: set[str]) -> None:
    assert metric_names(expr) == want


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ('m{job=~"$job", phase!="Failed"}', [Selector("m", frozenset({"job", "phase"}))]),
        ('a{x="}"} / b{y=~"a,b"}', [Selector("a", frozenset({"x"})), Selector("b", frozenset({"y"}))]),
        ("m", [Selector("m", frozenset())]),
    ],
    ids=["two-matchers", "brace-inside-string", "no-matchers"],
)
def test_matcher_labels(expr: str, want: list[Selector]) -> None:
    assert selectors(expr) == want


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("label_values(apwa_subtasks_created_total, job)", {"apwa_subtasks_created_total"}),
        ('label_values(m{job="x"}, instance)', {"m"}),
        ("query_result(sum(m))", {"m"}),
    ],
    ids=["label-values", "label-values-with-matchers", "promql"],
)
def test_grafana_variables(query: str, want: set[str]) -> None:
    assert {s.metric for s in grafana_variable_selectors(query)} == want


def test_name_matchers_are_refused() -> None:
    with pytest.raises(ValueError, match="__name__"):
        selectors('{__name__=~"apwa_.*"}')
