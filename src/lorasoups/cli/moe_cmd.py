"""``lorasoups moe``: a mixture of LoRA experts — frozen skill LoRAs mixed per token by trained
top-k routers; saved as an MoE folder (not a PEFT adapter) that ``lorasoups eval`` loads."""

from __future__ import annotations

import argparse
import os

from ..train.options import MoeOptions
from .common import add_combine_io_args, add_run_args, run_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "moe", help="mixture of LoRA experts: train per-token top-k routers over frozen skill LoRAs",
        description="Wraps every adapted module with a router that reads the module's own input and mixes the "
                    "frozen LoRA experts per token (softmax over the top-k logits). Only the routers train, on the "
                    "same skill mix CAT uses. An MoE is not a LoRA (the update depends on each token's gates); it "
                    "is saved as moe_config.json (expert paths + SHA-256) + routers.safetensors.")
    add_combine_io_args(p, adapters_help="two or more PEFT skill LoRA folders (the experts)",
                        data_help="skill data spec(s), e.g. gsm8k codealpaca (repeatable)", out_help="output MoE folder")
    MoeOptions.add_arguments(p)
    add_run_args(p, quiet_help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..moe import read_moe_config, train_moe

    from ..io.hub import resolve_adapter_arg

    out = train_moe(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out,
                    progress=not args.quiet, **run_kwargs(args), **MoeOptions.from_args(args))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch: the main process reports
        return 0
    cfg = read_moe_config(out)
    t = cfg["training"]
    vb, va = t.get("val_loss_before"), t.get("val_loss_after")
    print(f"wrote {out}  ({len(cfg['experts'])} experts, top-k {cfg['top_k']}, {len(cfg['routed_modules'])}/"
          f"{len(cfg['modules'])} modules routed, {t['resolved']['steps']} steps, {t['train_seconds']:.1f} s"
          + (f", val loss {vb:.4f} -> {va:.4f}" if vb is not None and va is not None else "") + ")")
    return 0
