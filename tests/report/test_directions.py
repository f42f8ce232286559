"""Metric roles and directions come from each task's declaration: primary metrics are ranked in
their own direction; failure rates, controls and diagnostics are reported but never marked best,
never given gains, super-linearity rows or paired differences."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from lorasoups.config import load_config
from lorasoups.eval.registry import ROLES, MetricInfo, get_task, load_tasks
from lorasoups.report.analysis import analyse, default_columns
from lorasoups.report.tables import best_rows, markdown_table

TASK = "gsm8k_words"
# base: the most "no number" answers and the lowest control NLL; the merge is best on accuracy
VALUES = {
    "base": {"acc_strict": 0.10, "no_number": 0.90, "nll_gold": 2.0, "nll_control": 1.0},
    "math": {"acc_strict": 0.30, "no_number": 0.20, "nll_gold": 1.5, "nll_control": 3.0},
    "code": {"acc_strict": 0.12, "no_number": 0.50, "nll_gold": 1.9, "nll_control": 2.0},
    "soup": {"acc_strict": 0.50, "no_number": 0.10, "nll_gold": 1.2, "nll_control": 4.0},
}


def _doc(columns: list[dict] | None = None) -> dict:
    t = get_task(TASK)
    results = {}
    for m, vals in VALUES.items():
        metrics = {k: {"value": v, "stderr": 0.01, "n": 50} for k, v in vals.items()}
        results[m] = {"words": {"metrics": metrics, "primary_metrics": list(t.primary(list(metrics))),
                                "metric_roles": {k: asdict(t.info(k)) for k in metrics}}}
    methods = {"base": {"method": "base", "skills": []}, "math": {"method": "skill", "skills": ["math"]},
               "code": {"method": "skill", "skills": ["code"]}, "soup": {"method": "linear", "skills": ["math", "code"]}}
    return {"methods": methods, "results": results, "columns": columns or [],
            "tasks": {"words": {"task": TASK, "role": "target"}}}


def test_every_metric_of_every_task_is_declared():
    for name, t in load_tasks().items():
        for m in t.metrics:
            info = t.info(m)
            assert info.role in ROLES, (name, m)
            assert info.better in (("higher", "lower") if info.ranked else ("none",)), (name, m, info)
        assert all(t.info(m).role == "primary" for m in t.primary())
    with pytest.raises(KeyError, match="no metric 'acc'"):
        get_task(TASK).info("acc")


@pytest.mark.parametrize("task,metric,info", [
    ("gsm8k_words", "no_number", MetricInfo("failure", "none")),
    ("gsm_hard", "timed_out", MetricInfo("failure", "none")),
    ("gsm_hard", "no_return", MetricInfo("failure", "none")),
    ("mbpp", "failed_assert", MetricInfo("failure", "none")),
    ("qabot_dnd", "nll_control", MetricInfo("control", "none")),
    ("prompt_formats", "pred_majority_rate", MetricInfo("diagnostic", "none")),
    ("prompt_formats", "spread", MetricInfo("diagnostic", "none")),
    ("qabot_dnd", "nll_gold", MetricInfo("score", "lower")),
    ("qabot_dnd", "f1", MetricInfo("primary", "higher")),
])
def test_declarations(task, metric, info):
    assert get_task(task).info(metric) == info


def test_no_report_block_gives_primary_metrics_in_their_direction():
    doc = _doc()
    cols = default_columns(doc)
    assert cols == [{"label": "words acc_strict", "task": "words", "metric": "acc_strict", "better": "higher",
                     "target": True}]
    md = markdown_table(doc)
    assert "no_number" not in md and "nll_control" not in md
    assert best_rows(doc, cols[0]) == {"soup"}
    an = analyse(doc)
    assert {r["column"] for r in an["superlinearity"]} == {"words acc_strict"}
    # a likelihood-only run: the primary metric is the ranked likelihood gap
    assert get_task(TASK).primary(["nll_gold", "nll_control", "nll_gap"]) == ("nll_gap",)


def test_failure_rates_and_controls_are_never_ranked(tmp_path):
    """Columns named in a config without ``better`` take the task's declaration: the base model is
    not bolded for the most "no number" answers, nor for the lowest control NLL, and neither column
    gets gains or super-linearity rows."""
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "q", "output": "a"}] * 4))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
name: t
base: tiny
skills:
  math: {{data: ["{data}"]}}
methods:
  base: {{}}
eval:
  tasks:
    words: {{task: {TASK}, role: target}}
report:
  columns:
    - {{task: words, metric: acc_strict}}
    - {{task: words, metric: no_number}}
    - {{task: words, metric: nll_control}}
    - {{task: words, metric: nll_gold}}
""")
    c = load_config(cfg)
    better = {col.metric: col.better for col in c.columns}
    assert better == {"acc_strict": "higher", "no_number": "none", "nll_control": "none", "nll_gold": "lower"}
    cols = [{"label": col.label, "task": col.task, "metric": col.metric, "better": col.better, "target": col.target}
            for col in c.columns]
    doc = _doc(cols)
    marked = {col["metric"]: best_rows(doc, col) for col in cols}
    assert marked == {"acc_strict": {"soup"}, "no_number": set(), "nll_control": set(), "nll_gold": {"soup"}}
    md = markdown_table(doc)
    base_row = next(line for line in md.splitlines() if line.startswith("| base"))
    assert "**" not in base_row
    an = analyse(doc)
    assert {r["column"] for r in an["superlinearity"]} == {"words acc_strict", "words nll_gold"}
