"""How much do teacher-forced likelihood comparisons move between bf16 autocast and fp32?

Issue #15 item 4: per-item NLL moves by up to ~0.007 nats between bf16 and fp32 scoring, the same
order as some paired differences between methods. This script takes a finished experiment run
(``lorasoups run ... --out RUN``), re-scores every row (base, skill LoRAs, merged methods) on the
run's likelihood target task(s) in both precisions, side by side in one process, and prints:

- per row: mean and max |NLL_fp32 - NLL_bf16| over items;
- per row and reference (default ``linear`` and ``data_mix``): the paired difference row - reference
  (mean ± s.e. over the same items) in bf16 and in fp32, its shift, and whether the verdict
  "beyond 1.96 paired s.e." (better / worse / neither) changes.

Usage::

    python benchmarks/precision_shift.py runs/math_code_cpu [--task gsm_hard_nll] [--limit 80]
        [--metrics nll_gold,nll_gap] [--refs linear,data_mix] [--json out.json]

Both precisions are computed here (nothing is read from the run's own evaluation), so the
comparison is not confounded by code changes since the run. Cost on 2 CPU cores: about one
evaluation of the task per row in each precision (gsm_hard_nll, 80 items: ~20 s bf16, ~45 s fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from lorasoups.eval.metrics import item_scores, paired_difference
from lorasoups.eval.runner import evaluate
from lorasoups.eval.samples import read_samples, samples_path


def _rows(run: Path, doc: dict) -> dict[str, Path | None]:
    """Row name -> adapter folder (None = the base model alone), in the run's method order."""
    out: dict[str, Path | None] = {}
    for name in doc.get("methods") or {}:
        if name == "base":
            out[name] = None
        elif (run / "methods" / name).is_dir():
            out[name] = run / "methods" / name
        elif (run / "skills" / name).is_dir():
            out[name] = run / "skills" / name
    return out


def _target_likelihood_tasks(doc: dict) -> dict[str, dict]:
    """The run's evaluation entries with role target that are scored by likelihood."""
    tasks = (doc.get("config") or {}).get("eval", {}).get("tasks", {})
    return {k: v for k, v in tasks.items()
            if v.get("role") == "target" and v.get("likelihood", True) is not False}


def _verdict(m) -> str:
    if not (m.n and math.isfinite(m.stderr)):
        return "?"
    if m.value > 1.96 * m.stderr:
        return "+"
    if m.value < -1.96 * m.stderr:
        return "-"
    return "0"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished `lorasoups run` output folder")
    ap.add_argument("--task", default=None, help="evaluation entry of the run (default: its likelihood targets)")
    ap.add_argument("--limit", type=int, default=None, help="items (default: the run's limit)")
    ap.add_argument("--metrics", default="nll_gold,nll_gap")
    ap.add_argument("--refs", default="linear,data_mix")
    ap.add_argument("--rows", default=None, help="comma-separated rows (default: every row of the run)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    a = ap.parse_args(argv)

    doc = json.loads((a.run / "results.json").read_text())
    base = doc.get("base") or (doc.get("config") or {}).get("base")
    if isinstance(base, dict):
        base = base.get("path") or base.get("name")
    entries = _target_likelihood_tasks(doc)
    if a.task:
        entries = {a.task: (doc["config"]["eval"]["tasks"] or {})[a.task]}
    rows = _rows(a.run, doc)
    if a.rows:
        rows = {k: rows[k] for k in a.rows.split(",")}
    metrics = a.metrics.split(",")
    refs = [r for r in a.refs.split(",") if r in rows]
    report: dict = {"run": str(a.run), "commit": (doc.get("provenance") or {}).get("git_commit"), "tasks": {}}
    t0 = time.time()
    for entry, spec in entries.items():
        task = spec.get("task", entry)
        limit = a.limit if a.limit is not None else spec.get("limit")
        scores: dict[str, dict[str, dict[str, dict]]] = {"bf16": {}, "fp32": {}}
        for row, adapter in rows.items():
            for prec in ("bf16", "fp32"):
                with tempfile.TemporaryDirectory() as tmp:
                    ts = time.time()
                    evaluate(base, adapter, [task], Path(tmp) / "o", limit=limit, generate=False,
                             likelihood=True, precision=prec, batch_size=a.batch_size, progress=False)
                    recs = read_samples(samples_path(Path(tmp) / "o", task))
                    scores[prec][row] = {m: item_scores(recs, m) for m in metrics}
                    print(f"  {entry} {row:12s} {prec}: {time.time() - ts:5.1f} s", file=sys.stderr, flush=True)
        per_row = {}
        for row in rows:
            g16, g32 = scores["bf16"][row][metrics[0]], scores["fp32"][row][metrics[0]]
            diffs = [abs(g32[k] - g16[k]) for k in g16 if k in g32]
            per_row[row] = {"mean_abs_shift": sum(diffs) / len(diffs), "max_abs_shift": max(diffs), "n": len(diffs)}
        comps = []
        for metric in metrics:
            for ref in refs:
                for row in rows:
                    if row == ref:
                        continue
                    d16 = paired_difference(scores["bf16"][row][metric], scores["bf16"][ref][metric])
                    d32 = paired_difference(scores["fp32"][row][metric], scores["fp32"][ref][metric])
                    comps.append({"metric": metric, "row": row, "ref": ref,
                                  "bf16": [d16.value, d16.stderr], "fp32": [d32.value, d32.stderr],
                                  "shift": d32.value - d16.value,
                                  "verdict_bf16": _verdict(d16), "verdict_fp32": _verdict(d32)})
        report["tasks"][entry] = {"task": task, "limit": limit, "per_row": per_row, "paired": comps}

        print(f"\n## {entry} ({task}, {limit} items): per-item |NLL_fp32 - NLL_bf16| of {metrics[0]}")
        print("| row | mean | max |\n|---|---:|---:|")
        for row, v in per_row.items():
            print(f"| {row} | {v['mean_abs_shift']:.4f} | {v['max_abs_shift']:.4f} |")
        for metric in metrics:
            print(f"\n### {metric}: paired difference row − ref, bf16 vs fp32 (± s.e.; verdict beyond 1.96 s.e.)")
            print("| row | ref | bf16 | fp32 | shift | shift / s.e. | verdict bf16 → fp32 |\n|---|---|---:|---:|---:|---:|---|")
            for c in comps:
                if c["metric"] != metric:
                    continue
                se = c["bf16"][1] or float("nan")
                flag = "" if c["verdict_bf16"] == c["verdict_fp32"] else " **changed**"
                print(f"| {c['row']} | {c['ref']} | {c['bf16'][0]:+.4f} ± {c['bf16'][1]:.4f} | "
                      f"{c['fp32'][0]:+.4f} ± {c['fp32'][1]:.4f} | {c['shift']:+.4f} | {c['shift'] / se:+.2f} | "
                      f"{c['verdict_bf16']} → {c['verdict_fp32']}{flag} |")
        changed = [c for c in comps if c["verdict_bf16"] != c["verdict_fp32"]]
        shifts = [abs(c["shift"]) for c in comps]
        print(f"\n{entry}: {len(comps)} paired comparisons; |shift| mean {sum(shifts) / len(shifts):.4f}, "
              f"max {max(shifts):.4f} nats; verdicts changed: {len(changed)}")
    report["wall_s"] = time.time() - t0
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    print(f"\nwall {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
