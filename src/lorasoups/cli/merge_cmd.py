"""``lorasoups merge``: closed-form merge of LoRA adapters (linear, concat, TIES, DARE, ...)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge LoRA adapters with a closed-form method (see: lorasoups ls methods)",
                       description="Merge PEFT LoRA adapters module by module. Exact methods (linear, concat, "
                                   "task_arithmetic) write a rank-sum LoRA; dense methods (ties, dare_*, "
                                   "magnitude_prune) need an SVD step (--rank K, default: largest input rank) "
                                   "or --full.")
    p.add_argument("--method", required=True, help="merge method name (lorasoups ls methods)")
    p.add_argument("--adapters", required=True, nargs="+", metavar="DIR", help="PEFT LoRA adapter folders")
    p.add_argument("--weights", nargs="+", type=float, metavar="W", default=None,
                   help="one weight per adapter, may be negative (default: 1/n each for linear, the average "
                        "as in model soups; 1 each for the other methods, e.g. task_arithmetic sums)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="method parameter, repeatable (e.g. --param density=0.5)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int, default=None, metavar="K",
                   help="SVD step: best rank-K approximation of the merged ΔW, written as a rank-K LoRA")
    g.add_argument("--full", action="store_true", help="write base + ΔW as a Hugging Face model folder")
    p.add_argument("--base", default=None, help="base model for --full (default: the adapters' base model)")
    p.add_argument("--svd", choices=["exact", "randomized"], default="exact",
                   help="SVD driver for the SVD step (default exact; randomized is much faster on large matrices)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype of the written adapter tensors (computation is fp32)")
    p.add_argument("--allow-different-base", action="store_true",
                   help="merge adapters whose base_model_name_or_path differ")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true",
                   help="print only the summary (no progress bar; bars show only on a terminal, "
                        "or with LORASOUPS_PROGRESS=1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..merge.driver import merge_adapters, parse_param_args

    quiet = args.quiet

    def log(line: str) -> None:
        if not quiet or not line.startswith("["):
            print(line, flush=True)

    from ..io.hub import resolve_adapter_arg

    merge_adapters([resolve_adapter_arg(a) for a in args.adapters], args.method, args.out, weights=args.weights, params=parse_param_args(args.param),
                   rank=args.rank, full=args.full, base=args.base, overwrite=args.overwrite, svd=args.svd,
                   dtype=args.dtype, allow_different_base=args.allow_different_base,
                   allow_pickle=args.allow_pickle, log=log, progress=False if quiet else None)
    return 0
