"""``forest.png``: paired differences of every method against reference rows, with 95 % intervals.

A forest plot answers "is this method better than that one, on the same items?" far better than
overlapping error bars of two means: the per-item difference removes the item-to-item variance
that both methods share. The differences come from :func:`lorasoups.report.analysis.analyse`
(``doc["analysis"]["paired"]``: mean paired difference ``diff`` and its standard error
``stderr`` over the items both methods scored). Each panel is one (column, reference) pair; the
x axis is oriented so that **right is better** (a lower-is-better metric such as an NLL is
negated), the interval is ``diff ± 1.96 · stderr`` (normal approximation), and intervals that
exclude 0 are drawn solid.

Which columns: ``report.forest_columns`` in the config (labels), else every *target* column whose
direction is known (``better`` higher/lower), skipping a column where no method differs from any
reference (e.g. an accuracy at the floor for every method, or every adapter giving the same
answer). Which references: the config's ``report.compare_to`` (e.g. ``linear`` and ``data_mix``).
The base model's row (method ``base``) is left out: its distance to every adapter is the skills'
own effect (in the tables' "vs the base model"), and it would stretch the axis so far that the
differences between combinations, which the plot is for, shrink to a point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .plot import run_title, save_figure

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def forest_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels of the forest plot, as data (also used by tests and tables).

    Args:
        doc: a results document with ``columns``, ``config.report.compare_to`` and
            ``analysis.paired`` rows (``column``, ``method``, ``vs``, ``ref``, ``diff``, ``stderr``, ``n``).

    Returns:
        a list of ``{"column", "ref", "better", "rows": [{"method", "effect", "lo", "hi", "n",
        "significant"}]}``, where ``effect`` is the paired difference oriented so that positive
        means better than the reference (units of the metric), ``lo``/``hi`` its 95 % interval.
        Empty when the document has no paired differences against a reference.
    """
    report = ((doc.get("config") or {}).get("report") or {})
    refs = list(report.get("compare_to") or [])
    columns = doc.get("columns") or []
    wanted = report.get("forest_columns")
    if wanted:
        cols = [c for c in columns if c.get("label") in wanted]
    else:
        cols = [c for c in columns if c.get("target") and c.get("better", "higher") in ("higher", "lower")]
    paired = ((doc.get("analysis") or {}).get("paired")) or []
    methods = doc.get("methods") or {}
    base_rows = {m for m, info in methods.items() if (info or {}).get("method") == "base"} or {"base"}
    panels: list[dict[str, Any]] = []
    for c in cols:
        sign = 1.0 if c.get("better", "higher") == "higher" else -1.0
        col_panels = []
        for ref in refs:
            rows = []
            for p in paired:
                if p.get("column") != c["label"] or p.get("vs") != f"method:{ref}" or p["method"] in base_rows:
                    continue
                d, se = p.get("diff"), p.get("stderr")
                if d is None or se is None or not math.isfinite(d) or not math.isfinite(se):
                    continue
                eff = sign * float(d)
                rows.append({"method": p["method"], "effect": eff, "lo": eff - Z95 * se, "hi": eff + Z95 * se,
                             "n": p.get("n"), "significant": abs(d) > Z95 * se})
            if rows:
                col_panels.append({"column": c["label"], "ref": ref, "better": c.get("better", "higher"),
                                   "rows": rows})
        # a column where every method ties every reference on every item says nothing: leave it out
        if any(r["effect"] != 0 or r["hi"] != r["lo"] for pn in col_panels for r in pn["rows"]):
            panels.extend(col_panels)
    return panels


def plot_forest(doc: dict[str, Any], out: str | Path) -> Path | None:
    """Draw the forest plot into ``out`` (PNG); returns its path, or None when there is nothing to
    draw (no reference rows in ``report.compare_to`` or no per-item scores)."""
    panels = forest_panels(doc)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in doc.get("methods", {})]
    order = {m: i for i, m in enumerate(methods)}
    ncol = min(2, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    height = 0.28 * max(len(p["rows"]) for p in panels) + 1.2
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, height * nrow + 0.5), squeeze=False)
    for j in range(nrow * ncol):
        ax = axes[j // ncol][j % ncol]
        if j >= len(panels):
            ax.axis("off")
            continue
        pn = panels[j]
        rows = sorted(pn["rows"], key=lambda r: order.get(r["method"], 1e9))
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows):
            colour = "tab:blue" if r["effect"] > 0 else "tab:red"
            style = "-" if r["significant"] else ":"
            ax.plot([r["lo"], r["hi"]], [y, y], style, color=colour, linewidth=1.6)
            ax.plot([r["effect"]], [y], "o", color=colour, markersize=4,
                    markerfacecolor=colour if r["significant"] else "white")
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels([r["method"] for r in rows], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        unit = "lower is better, negated" if pn["better"] == "lower" else "higher is better"
        ax.set_title(f"{pn['column']} vs {pn['ref']}", fontsize=8.5)
        ax.set_xlabel(f"paired difference, 95% CI (right = better; {unit})", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, out, f"{run_title(doc)}: every method vs the reference rows, same items", fontsize=9.5)
