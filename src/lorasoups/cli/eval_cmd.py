"""``lorasoups eval``: evaluate a base model, optionally with a LoRA adapter or MoE folder.

The evaluation flags come from :class:`~lorasoups.eval.options.EvalOptions` (``--limit``,
``--no-generate``, ``--sandbox-isolation``, ...), plus a few short aliases."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..eval.options import EvalOptions

    p = sub.add_parser(
        "eval", help="evaluate a model (+ adapter) on benchmark tasks",
        description="Evaluate a base model, optionally with a PEFT LoRA adapter folder or an MoE folder, on "
                    "tasks from `lorasoups ls tasks`. Writes one folder per task, OUT/<task>/results.json (metrics "
                    "with standard errors, options, checksums, provenance) and OUT/<task>/samples.jsonl.")
    p.add_argument("--base", default=None,
                   help="base model: embedded name, HF folder or hub id (default: the base the adapter records "
                        "as base_model_name_or_path, else smollm2-135m)")
    p.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder or MoE folder")
    p.add_argument("--task", action="append", required=True, metavar="NAME",
                   help="task name (repeatable, or comma-separated; 'all' for every task) or your own data file "
                        "PATH.jsonl/.csv/.parquet[:key=value,...] (docs/evaluation.md)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    EvalOptions.add_arguments(p, skip=("progress", "overwrite"))
    p.add_argument("--fp32", dest="bf16", action="store_false", default=argparse.SUPPRESS, help="alias of --no-bf16")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=argparse.SUPPRESS, help="alias of --timeout-s")
    p.add_argument("--weak-isolation", dest="sandbox_isolation", action="store_const", const="weak",
                   default=argparse.SUPPRESS,
                   help="alias of --sandbox-isolation weak: where the bubblewrap sandbox cannot run, programs get "
                        "resource limits only (they can read your files and use the network); see docs/sandbox.md")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.options import EvalOptions
    from ..eval.runner import evaluate, metric_table
    from ..io.hub import resolve_adapter_arg

    res = evaluate(args.base, resolve_adapter_arg(args.adapter) if args.adapter else None, args.task, args.out,
                   overwrite=args.overwrite, progress=not args.quiet,
                   **EvalOptions.from_args(args, skip=("progress", "overwrite")))
    print(metric_table(res))
    print(f"wrote {', '.join(f'{args.out}/{t}/' for t in res['tasks'])} ({res['wall_time_s']} s)")
    return 0
