"""Method × metric tables (Markdown and CSV) from a results document.

Cells are ``mean ± standard error`` as reported by the evaluation; the best value of each column
(highest or lowest, by the column's ``better``) is marked: bold in Markdown, listed in the CSV's
``best_in`` field.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from .analysis import default_columns, metric_value


def arrow(col: dict[str, Any]) -> str:
    """``↑`` / ``↓`` for a column ranked higher / lower is better, else nothing."""
    return {"higher": "↑", "lower": "↓"}.get(col.get("better", "higher"), "")


def _num(x: Any, digits: int) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _digits(values: list[float]) -> int:
    """3 decimals for values below 10, else 1."""
    big = max((abs(v) for v in values), default=0.0)
    return 3 if big < 10 else 1


def best_rows(doc: dict[str, Any], col: dict[str, Any]) -> set[str]:
    """Method labels holding the best value of ``col`` (ties all marked); empty if < 2 values."""
    if col.get("better", "higher") not in ("higher", "lower"):
        return set()  # not ranked: a failure rate, control or diagnostic
    vals = {m: metric_value(doc["results"], m, col["task"], col["metric"]) for m in doc["methods"]}
    vals = {m: v.value for m, v in vals.items() if v is not None and math.isfinite(v.value)}
    if len(vals) < 2 or len(set(vals.values())) == 1:
        return set()  # nothing to single out
    best = max(vals.values()) if col.get("better", "higher") == "higher" else min(vals.values())
    return {m for m, v in vals.items() if v == best}


def table_rows(doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """(columns, rows) where each row is a list of cells ``{"value", "stderr", "n", "best"}``."""
    cols = list(doc.get("columns") or default_columns(doc))  # the config's, else each task's primary metrics
    best = [best_rows(doc, c) for c in cols]
    rows = []
    for m in doc["methods"]:
        row = []
        for c, b in zip(cols, best):
            v = metric_value(doc["results"], m, c["task"], c["metric"])
            fin = v is not None and math.isfinite(v.value)
            row.append({"value": v.value if fin else None, "stderr": v.stderr if fin and math.isfinite(v.stderr) else None,
                        "n": v.n if v is not None else None, "best": m in b})
        rows.append(row)
    return cols, rows


def markdown_table(doc: dict[str, Any]) -> str:
    """The results table in Markdown: one row per method, one column per (task, metric)."""
    cols, rows = table_rows(doc)
    header = ["method", "algorithm"] + [f"{c['label']} {arrow(c)}".rstrip() for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * len(cols)) + "|"]
    digits = [_digits([r[j]["value"] for r in rows if r[j]["value"] is not None]) for j in range(len(cols))]
    for m, row in zip(doc["methods"], rows):
        info = doc["methods"][m]
        cells = [m, info.get("method", "")]
        for j, cell in enumerate(row):
            if cell["value"] is None:
                cells.append("—")
                continue
            s = _num(cell["value"], digits[j])
            if cell["stderr"] is not None:
                s += f" ± {_num(cell['stderr'], digits[j])}"
            cells.append(f"**{s}**" if cell["best"] else s)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    foot = ("Mean ± standard error; bold = best in column (↑ higher is better, ↓ lower is better; no arrow: "
            "not ranked — a failure rate, control or diagnostic — nothing marked).")
    by_col = [f"{c['label']}: {'/'.join(str(x) for x in nn)}" for j, c in enumerate(cols)
              if (nn := sorted({r[j]["n"] for r in rows if r[j]["n"] is not None}))]
    if by_col:
        foot += " Items per column: " + "; ".join(by_col) + "."
    return "\n".join(lines) + "\n\n" + foot + "\n"


def csv_table(doc: dict[str, Any]) -> str:
    """The results table as CSV: ``method, kind, <col>, <col> stderr, <col> n, ..., best_in``."""
    cols, rows = table_rows(doc)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["method", "algorithm"]
    for c in cols:
        head += [c["label"], f"{c['label']} stderr", f"{c['label']} n"]
    head.append("best_in")
    w.writerow(head)
    for m, row in zip(doc["methods"], rows):
        info = doc["methods"][m]
        out: list[Any] = [m, info.get("method")]
        for cell in row:
            out += ["" if cell["value"] is None else repr(float(cell["value"])),
                    "" if cell["stderr"] is None else repr(float(cell["stderr"])),
                    "" if cell["n"] is None else cell["n"]]
        out.append(";".join(c["label"] for c, cell in zip(cols, row) if cell["best"]))
        w.writerow(out)
    return buf.getvalue()


def _matrix(rows: list[str], cols: list[str], cell: dict[tuple[str, str], str], corner: str) -> list[str]:
    out = ["| " + " | ".join([corner] + cols) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
    for r in rows:
        if any((r, c) in cell for c in cols):
            out.append("| " + " | ".join([r] + [cell.get((r, c), "—") for c in cols]) + " |")
    return out


def analysis_markdown(doc: dict[str, Any]) -> str:
    """Markdown sections for the super-linearity check, the composition check and the paired differences (one row per
    method, one column per table column)."""
    an = doc.get("analysis") or {}
    methods = list(doc.get("methods") or {})
    parts: list[str] = []
    sl = an.get("superlinearity") or []
    if sl:
        cols = list(dict.fromkeys(r["column"] for r in sl))
        cell: dict[tuple[str, str], str] = {}
        singles: dict[str, str] = {}
        for r in sl:
            verdict = "yes" if r["superlinear"] else "no"
            if r.get("excess_stderr"):
                if abs(r["excess"]) >= 1.96 * r["excess_stderr"]:
                    verdict += "*"
            if not r.get("singles_all_positive", True):
                verdict += " †"
            se = f" ± {r['excess_stderr']:.3f}" if r.get("excess_stderr") is not None else ""
            cell[(r["method"], r["column"])] = f"{r['gain']:+.3f} vs {r['sum_single_gains']:+.3f} ({r['excess']:+.3f}{se}) {verdict}"
            singles[r["column"]] = ", ".join(f"{k} {v:+.3f}" for k, v in r["single_gains"].items())
        parts.append("## Super-linearity check\n")
        parts.append("LoRA Soups §5: does a merge gain more over the base model than the single skills together? "
                     "Each cell: gain of the method over the base model vs the sum of the single-skill gains "
                     "(excess = difference, ± its paired standard error over the same items), then yes/no; "
                     "\\* = excess beyond 1.96 standard errors; † = some single-skill gain is not positive, so "
                     "the comparison says little. Gains are oriented so that positive = better.\n")
        parts += _matrix(methods, cols, cell, "method")
        parts.append("")
        parts.append("Single-skill gains: " + "; ".join(f"{c}: {v}" for c, v in singles.items()) + ".\n")
    co = an.get("composition") or []
    if co:
        cols = list(dict.fromkeys(r["column"] for r in co))
        cell = {}
        for r in co:
            parts_ = [f"{v['gain']:+.3f} ± {v['stderr']:.3f} vs {v['single']}" for v in r["vs"]]
            cell[(r["method"], r["column"])] = "; ".join(parts_) + (" **yes**" if r["composes"] else " no")
        parts.append("## Composition check\n")
        parts.append("Does a combination beat every one of its single-skill LoRAs on the target? Each cell: the "
                     "paired difference (method − single skill, over the same items, oriented so that positive = "
                     "better) ± its standard error, per single skill; **yes** = better than each beyond 1.96 "
                     "standard errors.\n")
        parts += _matrix(methods, cols, cell, "method")
        parts.append("")
    pr = an.get("paired") or []
    if pr:
        parts.append("## Paired differences\n")
        parts.append("Mean per-item difference on the same items (method − reference) ± standard error; "
                     "\\* = |z| ≥ 1.96; ↑/↓ = better/worse than the reference in the column's direction.\n")
        extra = list(dict.fromkeys(r["vs"] for r in pr if r["vs"].startswith("method:")))
        for vs, title in [("base", "vs the base model"), ("best_single", "vs the best single-skill LoRA of each column"),
                          ("best_merge", "vs the best closed-form merge of each column (chosen on these items)")] + \
                [(v, f"vs {v.split(':', 1)[1]} (report.compare_to)") for v in extra]:
            rows = [r for r in pr if r["vs"] == vs]
            if not rows:
                continue
            cols = list(dict.fromkeys(r["column"] for r in rows))
            cell = {}
            for r in rows:
                arrow = {"better": "↑", "worse": "↓"}.get(r["direction"], "")
                cell[(r["method"], r["column"])] = (f"{r['diff']:+.4f} ± {r['stderr']:.4f}{' *' if r['significant'] else ''} {arrow}").strip()
            refs = {r["column"]: r["ref"] for r in rows}
            parts.append(f"**{title}**" + (" (" + "; ".join(f"{c}: {v}" for c, v in refs.items()) + ")" if vs in ("best_single", "best_merge") else "") + "\n")
            parts += _matrix(methods, cols, cell, "method")
            parts.append("")
    return "\n".join(parts)


def timing_markdown(doc: dict[str, Any]) -> str:
    """Wall time per stage (as produced; cached steps count the time they took when they ran)."""
    tm = doc.get("timing") or {}
    prod = tm.get("build_wall_s_when_produced") or {}
    this = tm.get("this_run_stage_wall_s") or {}
    if not prod and not this:
        return ""
    lines = ["## Wall time per stage\n", "| stage | seconds (when produced) | seconds (this invocation) |",
             "|---|---:|---:|"]
    for st in sorted(set(prod) | set(this), key=lambda s: list(prod).index(s) if s in prod else 99):
        a, b = prod.get(st, 0.0), this.get(st, 0.0)
        if a or b:
            lines.append(f"| {st} | {a:.1f} | {b:.1f} |")
    lines.append(f"\nThis invocation: {tm.get('this_run_wall_s', 0):.1f} s in total.\n")
    return "\n".join(lines)


def results_markdown(doc: dict[str, Any]) -> str:
    """The whole ``results.md``: header, table, per-method lines, analysis, timing, provenance."""
    prov = doc.get("provenance") or {}
    title = f"# {doc.get('name', 'experiment')}" + (f" — preset `{doc['preset']}`" if doc.get("preset") else "")
    head = [title, ""]
    if doc.get("description"):
        head += [doc["description"].strip(), ""]
    head.append(f"Base model: `{doc.get('base')}`; commit `{prov.get('git_commit')}`; created {prov.get('created')}.")
    head.append("")
    body = [markdown_table(doc)]
    body.append("## Methods\n")
    for m, info in doc["methods"].items():
        params = info.get("params") or {}
        ps = ", ".join(f"{k}={v}" for k, v in params.items()) if params and info.get("kind") != "trained" else ""
        body.append(f"- **{m}** ({info.get('method')}{': ' + ps if ps else ''}): {info.get('description') or ''}")
    body.append("")
    an = analysis_markdown(doc)
    if an:
        body.append(an)
    t = timing_markdown(doc)
    if t:
        body.append(t)
    return "\n".join(head + body)
