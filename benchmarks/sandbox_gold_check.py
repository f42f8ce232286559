"""Gold check of the sandbox: every MBPP test-split reference solution passes its asserts and every
GSM-Hard gold program reproduces its target, through the tasks' own program/score path.

    python benchmarks/sandbox_gold_check.py            # 500 MBPP + 1,319 GSM-Hard
    python benchmarks/sandbox_gold_check.py --workers 2

Prints per dataset: items, passed, failures (first few with their error), wall seconds.
Exit status 1 when anything fails.
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()

    from lorasoups.eval.registry import get_task
    from lorasoups.eval.sandbox import Sandbox
    from lorasoups.eval.tasks.mbpp import mbpp_response

    bad_total = 0
    with Sandbox(workers=args.workers) as sb:
        print("isolation:", sb.info["isolation"], "| memory bound:", sb.info["memory_bound"])
        mbpp = get_task("mbpp")
        recs = mbpp._records(args.data_dir)
        gsm = get_task("gsm_hard")
        for task, metric, completion in (
            (mbpp, "pass_at_1", lambda it: mbpp_response(recs[it.meta["task_id"]]["code"])),
            (gsm, "exec_acc", lambda it: it.gold_text),
        ):
            t0 = time.perf_counter()
            items = task.load_items(args.data_dir, args.limit)
            progs = [task.program(it, completion(it)) for it in items]
            res = sb.run_many([p for p, _, _ in progs])
            scored = [task.score(it, "", r, code) for it, r, (_, code, _) in zip(items, res, progs)]
            bad = [(it.id, s.get("status"), s.get("error")) for it, s in zip(items, scored) if s["scores"][metric] != 1.0]
            bad_total += len(bad)
            print(f"{task.name}: {len(items) - len(bad)}/{len(items)} gold programs pass ({metric}), "
                  f"{time.perf_counter() - t0:.1f} s")
            for b in bad[:10]:
                print("  FAIL", *b)
    return 1 if bad_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
