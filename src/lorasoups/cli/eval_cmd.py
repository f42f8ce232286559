"""``lorasoups eval``: evaluate a base model, optionally with a LoRA adapter or MoE folder."""

from __future__ import annotations

import argparse

from .common import add_device_args


def add_parser(sub) -> None:
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
    p.add_argument("--limit", type=int, default=None, help="first N items per task (per format for prompt_formats)")
    p.add_argument("--shots", type=int, default=None, help="few-shot demos (default: the task's)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run model-written programs (math-with-code, mbpp) in the sandbox")
    p.add_argument("--no-generate", action="store_true",
                   help="likelihood metrics only: no generation, no code execution (fast)")
    p.add_argument("--no-likelihood", action="store_true", help="skip the gold/control likelihood metrics")
    p.add_argument("--backend", choices=["hf", "vllm", "auto"], default="hf",
                   help="hf (default), vllm (optional extra, GPU) or auto (vllm when installed and on CUDA, else hf)")
    add_device_args(p, precisions=("auto", "bf16", "fp32"),
                    precision_help="autocast: auto = bf16 on CUDA with bf16 and on CPUs with native bf16, else fp32 "
                                   "(weights stay fp32; --bf16/--fp32 are aliases)")
    p.add_argument("--no-prefix-cache", action="store_true", help="recompute the shared few-shot prefix for every batch")
    bf = p.add_mutually_exclusive_group()
    bf.add_argument("--bf16", dest="bf16", action="store_true", default=None, help="force bf16 autocast")
    bf.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    p.add_argument("--no-merge-lora", action="store_true", help="keep the LoRA unmerged (PEFT forward) instead of merge_and_unload")
    p.add_argument("--timeout", type=float, default=None, help="per-program sandbox timeout in seconds (default: the task's)")
    p.add_argument("--sandbox-workers", type=int, default=None)
    p.add_argument("--weak-isolation", action="store_true",
                   help="where the bubblewrap sandbox cannot run (no root, no user namespaces), run programs with "
                        "resource limits only (they can read your files and use the network); see docs/sandbox.md")
    p.add_argument("--rescore", default=None, metavar="DIR",
                   help="re-score the completions in DIR/samples (a previous run) instead of generating")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.runner import evaluate, metric_table

    from ..io.hub import resolve_adapter_arg

    res = evaluate(
        args.base, resolve_adapter_arg(args.adapter) if args.adapter else None, args.task, args.out,
        limit=args.limit, shots=args.shots, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        allow_code_execution=args.allow_code_execution, generate=not args.no_generate,
        likelihood=not args.no_likelihood, backend=args.backend, device=args.device, precision=args.precision, prefix_cache=not args.no_prefix_cache,
        bf16=args.bf16, merge_lora=not args.no_merge_lora, data_dir=args.data_dir, timeout_s=args.timeout,
        sandbox_workers=args.sandbox_workers, sandbox_isolation="weak" if args.weak_isolation else "auto",
        overwrite=args.overwrite, rescore=args.rescore,
        progress=not args.quiet,
    )
    print(metric_table(res))
    print(f"wrote {', '.join(f'{args.out}/{t}/' for t in res['tasks'])} ({res['wall_time_s']} s)")
    return 0
