"""Reports of an experiment run: ``results.md`` / ``results.csv`` tables (mean ± standard error,
best per column marked), ``results.png`` (grouped bar chart), ``forest.png`` (paired differences
vs the reference rows, :mod:`.forest`), super-linearity check and paired
differences (:mod:`.analysis`). ``lorasoups report RUN_DIR`` rebuilds them from ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import LorasoupsError


def write_report(doc: dict[str, Any], run_dir: str | Path) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``results.png`` and (where the config names reference
    rows in ``report.compare_to``) ``forest.png`` for a results document.

    Returns:
        name -> written path (``forest`` only when a forest plot was drawn).
    """
    from ..paths import atomic_write_text
    from .forest import plot_forest
    from .plot import plot_results
    from .tables import csv_table, results_markdown

    run_dir = Path(run_dir)
    md = run_dir / "results.md"
    cs = run_dir / "results.csv"
    atomic_write_text(md, results_markdown(doc))
    atomic_write_text(cs, csv_table(doc))
    png = plot_results(doc, run_dir / "results.png")
    written = {"md": md, "csv": cs, "png": png}
    forest = plot_forest(doc, run_dir / "forest.png")
    if forest is not None:
        written["forest"] = forest
    elif (run_dir / "forest.png").exists():  # a stale plot of an earlier analysis
        (run_dir / "forest.png").unlink()
    return written


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/results.json``.

    Raises:
        LorasoupsError: missing or unreadable file, naming it.
    """
    p = Path(run_dir) / "results.json"
    if not p.is_file():
        raise LorasoupsError(f"{p} not found: is {run_dir} a finished `lorasoups run` folder?")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LorasoupsError(f"{p}: unreadable results file: {e}") from None
    for k in ("methods", "results"):
        if k not in doc:
            raise LorasoupsError(f"{p}: not a lorasoups results file (no {k!r})")
    return doc


def rebuild_report(run_dir: str | Path, reanalyse: bool = True) -> dict[str, Path]:
    """Rebuild md/csv/png (and the analysis, from the samples files) from ``results.json``."""
    from .analysis import analyse

    doc = load_results(run_dir)
    if reanalyse:
        doc["analysis"] = analyse(doc, run_dir)
    return write_report(doc, run_dir)
