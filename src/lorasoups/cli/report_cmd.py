"""``lorasoups report RUN_DIR``: rebuild results.md / .csv / .png from RUN_DIR/results.json."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild a run's results tables and plot from its results.json")
    p.add_argument("run_dir", help="folder written by `lorasoups run`")
    p.add_argument("--print", dest="show", action="store_true", help="also print the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import load_results, rebuild_report
    from ..report.tables import markdown_table

    paths = rebuild_report(args.run_dir)
    if args.show:
        print(markdown_table(load_results(args.run_dir)))
    print("wrote " + "  ".join(str(p) for p in paths.values()))
    return 0
