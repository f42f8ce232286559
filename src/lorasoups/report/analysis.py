"""Analyses of an experiment's results: paired differences and the super-linearity check.

Paired differences (same items, two models): d_j = x_j(A) − x_j(B) per item j; mean d̄ and its
standard error sd(d)/√n (sample sd, ddof = 1). Pairing removes the between-item variance that
dominates unpaired standard errors when the same items are scored by every model.

Super-linearity (LoRA Soups, Prabhakar et al. 2024, §5 / Table 2 discussion): a merge of skills
1..k composes super-linearly on a target metric when its gain over the base model exceeds the sum
of the single-skill gains, g(merge) > Σ_i g(skill_i), where g(m) = score(m) − score(base) for
higher-is-better metrics and score(base) − score(m) for lower-is-better ones (NLL).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ID_FIELDS = ("id", "idx", "index", "item", "item_id", "doc_id", "i")
SCORE_FIELDS = ("scores", "metrics", "item_metrics", "values")


def metric_value(results: dict[str, Any], method: str, task: str, metric: str) -> dict[str, Any] | None:
    """``{"value", "stderr", "n"}`` of one cell, or None when absent."""
    cell = ((results.get(method) or {}).get(task) or {}).get("metrics", {}).get(metric)
    if cell is None:
        return None
    if isinstance(cell, (int, float)):
        return {"value": float(cell), "stderr": None, "n": None}
    return cell


def _item_id(rec: dict[str, Any], j: int) -> Any:
    for f in ID_FIELDS:
        if f in rec:
            return rec[f]
    return j


def _item_score(rec: dict[str, Any], metric: str) -> float | None:
    v: Any = None
    for f in SCORE_FIELDS:
        if isinstance(rec.get(f), dict) and metric in rec[f]:
            v = rec[f][metric]
            break
    else:
        v = rec.get(metric)
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None


def item_scores(samples_file: str | Path, metric: str) -> dict[Any, float]:
    """Per-item values of ``metric`` from a ``samples/<task>.jsonl`` file (item id -> value).

    Looks for the value under ``scores`` / ``metrics`` / ``item_metrics`` or at top level, and the
    item id under ``id`` / ``idx`` / ``index`` / ``item`` (else the line number). Items without the
    metric are left out. A missing file gives an empty dict.
    """
    p = Path(samples_file)
    out: dict[Any, float] = {}
    if not p.is_file():
        return out
    with open(p, encoding="utf-8") as f:
        for j, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            s = _item_score(rec, metric)
            if s is not None:
                out[_item_id(rec, j)] = s
    return out


def paired_difference(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any] | None:
    """Mean and standard error of a − b over the items both score (None if fewer than 2).

    Returns:
        ``{"diff", "stderr", "n"}``; stderr = sd(d, ddof=1)/√n.
    """
    common = [k for k in a if k in b]
    n = len(common)
    if n < 2:
        return None
    d = [a[k] - b[k] for k in common]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return {"diff": mean, "stderr": math.sqrt(var / n), "n": n}


def _gain(value: float, base: float, better: str) -> float:
    return value - base if better == "higher" else base - value


def analyse(doc: dict[str, Any], run_dir: str | Path | None = None) -> dict[str, Any]:
    """Super-linearity per target column and composite method, and paired differences of every
    method vs the base model, vs the best single-skill LoRA on every column, and vs each method
    named in the config's ``report.compare_to`` (where per-item scores are in the samples files).

    Args:
        doc: a results document (``results.json``): needs ``methods``, ``columns``, ``results``,
            and for paired differences ``samples`` (paths relative to ``run_dir``).
    """
    methods = doc.get("methods", {})
    results = doc.get("results", {})
    columns = doc.get("columns") or default_columns(doc)
    base_label = next((k for k, m in methods.items() if m.get("method") == "base"), None)
    skill_labels = [k for k, m in methods.items() if m.get("method") == "skill"]
    composite = [k for k, m in methods.items() if m.get("method") not in ("base", "skill")]
    run_dir = Path(run_dir) if run_dir else None
    samples = doc.get("samples") or {}
    compare_to = list(((doc.get("config") or {}).get("report") or {}).get("compare_to") or [])

    def scores(method: str, task: str, metric: str) -> dict[Any, float]:
        rel = (samples.get(method) or {}).get(task)
        if not rel or run_dir is None:
            return {}
        return item_scores(run_dir / rel, metric)

    out: dict[str, Any] = {"superlinearity": [], "paired": []}
    for c in columns:
        task, metric, better = c["task"], c["metric"], c.get("better", "higher")
        cells = {m: metric_value(results, m, task, metric) for m in methods}
        best_single = None
        singles = [(m, cells[m]["value"]) for m in skill_labels if cells.get(m)]
        if singles:
            best_single = (max if better == "higher" else min)(singles, key=lambda x: x[1])[0]
        # super-linearity: only meaningful on target columns with a base row and skill rows
        if c.get("target") and base_label and cells.get(base_label):
            b = cells[base_label]["value"]
            for m in composite:
                if not cells.get(m):
                    continue
                sks = methods[m].get("skills") or []
                single_rows = [s for s in skill_labels if (methods[s].get("skills") or [None])[0] in sks]
                if not single_rows or any(not cells.get(s) for s in single_rows):
                    continue
                g_single = {s: _gain(cells[s]["value"], b, better) for s in single_rows}
                g = _gain(cells[m]["value"], b, better)
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
                    ex = [sign * ((sm[k] - sb[k]) - sum(x[k] - sb[k] for x in ss)) for k in common]
                    mu = sum(ex) / len(ex)
                    sd = math.sqrt(sum((e - mu) ** 2 for e in ex) / (len(ex) - 1))
                    row["excess_stderr"], row["excess_n"] = sd / math.sqrt(len(ex)), len(ex)
                out["superlinearity"].append(row)
        # paired differences vs base and vs the best single skill
        if better == "none":
            continue
        refs = [("base", base_label), ("best_single", best_single)] + [(f"method:{x}", x) for x in compare_to]
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
                if pd is None:
                    continue
                z = pd["diff"] / pd["stderr"] if pd["stderr"] > 0 else (math.inf if pd["diff"] else 0.0)
                better_sign = 1 if better == "higher" else -1
                out["paired"].append({"column": c["label"], "method": m, "vs": ref_name, "ref": ref, **pd,
                                      "z": z, "significant": abs(z) >= 1.96,
                                      "direction": "better" if better_sign * pd["diff"] > 0 else
                                      ("worse" if pd["diff"] != 0 else "same")})
    return out


def default_columns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns when the config declares none: every metric of every task (first method's order)."""
    from ..config import default_better

    cols: list[dict[str, Any]] = []
    results = doc.get("results", {})
    tasks = doc.get("tasks", {})
    for tl, tinfo in tasks.items():
        seen: list[str] = []
        for m in results:
            for k in ((results[m].get(tl) or {}).get("metrics") or {}):
                if k not in seen:
                    seen.append(k)
        for k in seen:
            cols.append({"label": f"{tl} {k}", "task": tl, "metric": k, "better": default_better(k),
                         "target": tinfo.get("role") == "target"})
    return cols
