"""``lorasoups cat``: CAT, learnable concatenation of skill LoRAs (Prabhakar et al. 2024, §3),
exported as one standard PEFT adapter folder."""

from __future__ import annotations

import argparse
import os

from ..train.options import CatOptions
from .common import add_combine_io_args, add_run_args, run_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cat", help="CAT: train per-module coefficients of frozen skill LoRAs on a skill-data mix; export one LoRA",
        description="CAT (LoRA Soups §3): every adapted module computes W x + Σ_i c_i s_i B_i A_i x with the "
                    "base model and the skill LoRAs frozen; only the coefficients c are trained, on a small mix of "
                    "the skill datasets (never target-task data). The output is a standard PEFT LoRA of rank Σ r_i "
                    "(coefficients folded into lora_B, scaling 1) plus cat_coefficients.json, cat_log.jsonl, "
                    "coefficients.png and cat_options.json.")
    add_combine_io_args(p, adapters_help="two or more PEFT skill LoRA folders",
                        data_help="skill data spec(s), e.g. gsm8k codealpaca or gsm8k:max_samples=300 (repeatable)",
                        out_help="output adapter folder")
    CatOptions.add_arguments(p)
    add_run_args(p, quiet_help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..train.cat import train_cat

    from ..io.hub import resolve_adapter_arg

    out = train_cat(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out,
                    verbose=not args.quiet, **run_kwargs(args), **CatOptions.from_args(args))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch: the main process reports
        return 0
    opts = json.loads((Path(out) / "cat_options.json").read_text(encoding="utf-8"))
    summ = json.loads((Path(out) / "cat_coefficients.json").read_text(encoding="utf-8"))["summary"]
    vb, va = opts.get("val_loss_before"), opts.get("val_loss_after")
    print(f"wrote {out}  ({opts['resolved']['modules']} modules, {opts['resolved']['steps']} steps"
          + (f", val loss {vb:.4f} -> {va:.4f}" if vb is not None and va is not None else "") + ")")
    for name, s in summ.items():
        print(f"  {name}: mean c {s['mean']:.4f} (min {s['min']:.4f}, max {s['max']:.4f}, "
              f"mean |Δc| {s['mean_abs_change']:.4f})")
    return 0
