"""Sandbox throughput: programs per second over the 500 MBPP test-split reference solutions.

Each reference solution is turned into the program the ``mbpp`` task runs (solution + set-up +
the harness-checked asserts) and the whole list goes through
:meth:`lorasoups.eval.sandbox.Sandbox.run_many` with 1 and with 2 workers. Printed per worker
count: programs, wall seconds, programs/s, mean ms per program, and how many passed (all 500
should). Pool start-up is included. On a shared machine run old and new code back to back,
alternating, with ``--repeats`` and compare the best (least disturbed) figures, not single runs.

    python benchmarks/sandbox_throughput.py                  # 1 and 2 workers, all 500
    python benchmarks/sandbox_throughput.py --limit 100 --workers 1
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    from lorasoups.eval.registry import get_task
    from lorasoups.eval.sandbox import Sandbox
    from lorasoups.eval.tasks.mbpp import mbpp_response

    task = get_task("mbpp")
    items = task.load_items(args.data_dir, args.limit)
    recs = task._records(args.data_dir)
    progs, extracted = [], []
    for it in items:
        completion = mbpp_response(recs[it.meta["task_id"]]["code"])
        prog, code, _how = task.program(it, completion)
        progs.append(prog)
        extracted.append(code)
    print(f"{len(progs)} MBPP reference programs")
    print(f"{'workers':>7} {'wall_s':>8} {'prog/s':>8} {'ms/prog':>8} {'passed':>7}")
    for w in args.workers:
        for _ in range(args.repeats):
            with Sandbox(workers=w) as sb:
                t0 = time.perf_counter()
                res = sb.run_many(progs)
                dt = time.perf_counter() - t0
            passed = sum(task.score(it, "", r, x)["scores"]["pass_at_1"] for it, r, x in zip(items, res, extracted))
            print(f"{w:>7} {dt:>8.2f} {len(progs) / dt:>8.1f} {1000 * dt / len(progs):>8.2f} {int(passed):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
