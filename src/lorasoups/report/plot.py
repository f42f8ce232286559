"""``results.png``: a grouped bar chart of the results table (matplotlib, Agg backend).

One panel per table column (metrics have different units and scales); in every panel one bar per
method, in the same colour across panels, with the standard error as an error bar and the best
method's bar outlined.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .tables import arrow, table_rows


def plot_results(doc: dict[str, Any], out: str | Path) -> Path:
    """Draw the results chart into ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = table_rows(doc)
    methods = list(doc["methods"])
    n = max(1, len(cols))
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 1.5, 3.2 * nrow + 0.6), squeeze=False)
    cmap = plt.get_cmap("tab20")
    colours = [cmap(i % 20) for i in range(len(methods))]
    for j in range(nrow * ncol):
        ax = axes[j // ncol][j % ncol]
        if j >= len(cols):
            ax.axis("off")
            continue
        c = cols[j]
        xs, ys, es, cs, best = [], [], [], [], []
        for i, (m, row) in enumerate(zip(methods, rows)):
            cell = row[j]
            if cell["value"] is None:
                continue
            xs.append(i)
            ys.append(cell["value"])
            es.append(cell["stderr"] or 0.0)
            cs.append(colours[i])
            best.append(cell["best"])
        ax.bar(xs, ys, yerr=es, color=cs, capsize=2, edgecolor=["black" if b else "none" for b in best],
               linewidth=[1.6 if b else 0 for b in best])
        ax.set_title(f"{c['label']} {arrow(c)}".rstrip(), fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        if ys:
            lo = min(y - e for y, e in zip(ys, es))
            hi = max(y + e for y, e in zip(ys, es))
            if lo > 0 and (hi - lo) < 0.25 * hi:  # zoom in on close values (NLL), keep 0 otherwise
                pad = (hi - lo) * 0.3 + 1e-9
                ax.set_ylim(lo - pad, hi + pad)
        ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out, f"{run_title(doc)}: mean ± s.e., best outlined", fontsize=10)


def run_title(doc: dict[str, Any]) -> str:
    """``name (preset)`` of a results document, for figure titles."""
    return doc.get("name", "results") + (f" ({doc['preset']})" if doc.get("preset") else "")


def save_figure(fig: Any, out: str | Path, suptitle: str, fontsize: float = 10) -> Path:
    """Title, lay out and write a matplotlib figure to ``out`` (PNG, 120 dpi) atomically (temporary
    file, then rename); closes the figure and returns the path."""
    import matplotlib.pyplot as plt

    fig.suptitle(suptitle, fontsize=fontsize)
    # keep a band of about 0.45 inch at the top for the title: tight_layout alone lets the top
    # row's axes titles run into it on tall figures
    top = 1.0 - min(0.25, 0.45 / max(fig.get_figheight(), 1e-6))
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
