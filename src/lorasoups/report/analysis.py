"""Analyses of an experiment's results: paired differences and the super-linearity check.

Paired differences (same items, two models): d_j = x_j(A) − x_j(B) per item j; mean d̄ and its
standard error sd(d)/√n (sample sd, ddof = 1). Pairing removes the between-item variance that
dominates unpaired standard errors when the same items are scored by every model.

Only ranked metrics (a column whose ``better`` is ``higher`` or ``lower``; failure rates, controls
and diagnostics have ``none``) get gains, super-linearity rows and paired differences.

Super-linearity (LoRA Soups, Prabhakar et al. 2024, §5 / Table 2 discussion): a merge of skills
1..k composes super-linearly on a target metric when its gain over the base model exceeds the sum
of the single-skill gains, g(merge) > Σ_i g(skill_i), where g(m) = score(m) − score(base) for
higher-is-better metrics and score(base) − score(m) for lower-is-better ones (NLL).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..eval.metrics import Metric, mean_stderr, paired_difference
from ..eval.metrics import item_scores as _item_scores
from ..eval.samples import read_samples


def metric_value(results: dict[str, Any], method: str, task: str, metric: str) -> Metric | None:
    """The :class:`~lorasoups.eval.metrics.Metric` of one cell, or None when absent."""
    cell = ((results.get(method) or {}).get(task) or {}).get("metrics", {}).get(metric)
    return None if cell is None else Metric.from_dict(cell)


def item_scores(samples_file: str | Path, metric: str) -> dict[Any, float]:
    """Per-item values of ``metric`` from a task's ``samples.jsonl`` (item id -> value); items
    without the metric are left out; a missing file gives an empty dict.

    Raises:
        DataError: a corrupt samples file (names the file and the line).
    """
    p = Path(samples_file)
    return _item_scores(read_samples(p), metric) if p.is_file() else {}


def _gain(value: float, base: float, better: str) -> float:
    return value - base if better == "higher" else base - value


def analyse(doc: dict[str, Any], run_dir: str | Path | None = None) -> dict[str, Any]:
    """Super-linearity and composition per target column and composite method, and paired differences of every
    method vs the base model, vs the best single-skill LoRA on every column, vs the best closed-form
    (static) merge on every column (kind ``merge``; chosen on the same items, so the comparison
    favours it), and vs each method named in the config's ``report.compare_to`` (where per-item
    scores are in the samples files).

    Args:
        doc: a results document (``results.json``): needs ``methods``, ``columns``, ``results``,
            and for paired differences ``samples`` (paths relative to ``run_dir``).

    Returns:
        dict: ``superlinearity`` (gain over the base vs the sum of the single skills' gains),
        ``composition`` (per target column and composite method: its paired difference vs each of
        its own single-skill rows, oriented so that positive = better, and ``composes`` = better
        than every one of them beyond 1.96 paired standard errors — a combination that beats both
        skills alone, issue #15's composition effect), ``paired`` (vs base, best single, best
        closed-form merge and ``report.compare_to``).
    """
    methods = doc.get("methods", {})
    results = doc.get("results", {})
    columns = doc.get("columns") or default_columns(doc)
    base_label = next((k for k, m in methods.items() if m.get("method") == "base"), None)
    skill_labels = [k for k, m in methods.items() if m.get("method") == "skill"]
    merge_labels = [k for k, m in methods.items() if m.get("kind") == "merge"]
    composite = [k for k, m in methods.items() if m.get("method") not in ("base", "skill")]
    run_dir = Path(run_dir) if run_dir else None
    samples = doc.get("samples") or {}
    compare_to = list(((doc.get("config") or {}).get("report") or {}).get("compare_to") or [])

    def scores(method: str, task: str, metric: str) -> dict[Any, float]:
        rel = (samples.get(method) or {}).get(task)
        if not rel or run_dir is None:
            return {}
        return item_scores(run_dir / rel, metric)

    out: dict[str, Any] = {"superlinearity": [], "composition": [], "paired": []}
    for c in columns:
        task, metric, better = c["task"], c["metric"], c.get("better", "higher")
        cells = {m: metric_value(results, m, task, metric) for m in methods}
        best_single = None
        singles = [(m, cells[m].value) for m in skill_labels if cells.get(m)]
        if singles:
            best_single = (max if better == "higher" else min)(singles, key=lambda x: x[1])[0]
        merges = [(m, cells[m].value) for m in merge_labels if cells.get(m)]
        best_merge = (max if better == "higher" else min)(merges, key=lambda x: x[1])[0] if merges else None
        # super-linearity: only meaningful on target columns with a base row and skill rows
        if c.get("target") and better != "none" and base_label and cells.get(base_label):
            b = cells[base_label].value
            for m in composite:
                if not cells.get(m):
                    continue
                sks = methods[m].get("skills") or []
                single_rows = [s for s in skill_labels if (methods[s].get("skills") or [None])[0] in sks]
                if not single_rows or any(not cells.get(s) for s in single_rows):
                    continue
                g_single = {s: _gain(cells[s].value, b, better) for s in single_rows}
                g = _gain(cells[m].value, b, better)
                tot = sum(g_single.values())
                row = {"column": c["label"], "method": m, "gain": g, "single_gains": g_single,
                       "sum_single_gains": tot, "superlinear": g > tot, "excess": g - tot,
                       "singles_all_positive": all(v > 0 for v in g_single.values()),
                       "excess_stderr": None, "excess_n": None}
                # per item: excess_j = g_j(merge) - sum_i g_j(skill_i), paired over the same items
                sb, sm = scores(base_label, task, metric), scores(m, task, metric)
                ss = [scores(s, task, metric) for s in single_rows]
                common = [k for k in sm if k in sb and all(k in x for x in ss)]
                if len(common) >= 2:
                    sign = 1.0 if better == "higher" else -1.0
                    ex = mean_stderr([sign * ((sm[k] - sb[k]) - sum(x[k] - sb[k] for x in ss)) for k in common])
                    row["excess_stderr"], row["excess_n"] = ex.stderr, ex.n
                out["superlinearity"].append(row)
                # composition: the merge vs each of its own single skills, paired on the same items
                vs = []
                for s_row, s_sc in zip(single_rows, ss):
                    pd = paired_difference(sm, s_sc)
                    if pd.n < 2:
                        break
                    d = pd.value if better == "higher" else -pd.value
                    vs.append({"single": s_row, "gain": d, "stderr": pd.stderr, "n": pd.n,
                               "beyond": d > 0 and d >= 1.96 * pd.stderr and pd.stderr > 0})
                else:
                    out["composition"].append({"column": c["label"], "method": m, "vs": vs,
                                               "composes": all(v["beyond"] for v in vs)})
        # paired differences vs base and vs the best single skill
        if better == "none":
            continue
        refs = [("base", base_label), ("best_single", best_single), ("best_merge", best_merge)] + \
            [(f"method:{x}", x) for x in compare_to]
        for ref_name, ref in refs:
            if ref is None or ref not in methods:
                continue
            ref_scores = scores(ref, task, metric)
            if not ref_scores:
                continue
            for m in methods:
                if m == ref:
                    continue
                pd = paired_difference(scores(m, task, metric), ref_scores)
                if pd.n < 2:
                    continue
                z = pd.value / pd.stderr if pd.stderr > 0 else (math.inf if pd.value else 0.0)
                better_sign = 1 if better == "higher" else -1
                out["paired"].append({"column": c["label"], "method": m, "vs": ref_name, "ref": ref,
                                      "diff": pd.value, "stderr": pd.stderr, "n": pd.n,
                                      "z": z, "significant": abs(z) >= 1.96,
                                      "direction": "better" if better_sign * pd.value > 0 else
                                      ("worse" if pd.value != 0 else "same")})
    return out


def default_columns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns when the config declares none: each task's primary metrics, with the direction the
    task declares (``metric_roles`` of its evaluation results; failure rates, controls and
    diagnostics are never primary). Tasks are read from the first method that has them."""
    cols: list[dict[str, Any]] = []
    results = doc.get("results", {})
    for tl, tinfo in (doc.get("tasks") or {}).items():
        entry = next((results[m][tl] for m in results if (results[m].get(tl) or {}).get("metrics")), None)
        if entry is None:
            continue
        roles = entry.get("metric_roles") or {}
        for k in entry.get("primary_metrics") or []:
            if k in entry["metrics"]:
                cols.append({"label": f"{tl} {k}", "task": tl, "metric": k,
                             "better": (roles.get(k) or {}).get("better", "higher"),
                             "target": tinfo.get("role") == "target"})
    return cols
