"""``lorasoups moe``: a mixture of LoRA experts — frozen skill LoRAs mixed per token by trained
top-k routers; saved as an MoE folder (not a PEFT adapter) that ``lorasoups eval`` loads."""

from __future__ import annotations

import argparse

from .common import add_combine_io_args

# Kept in sync with lorasoups.moe.train (not imported here so that ``lorasoups --help`` stays fast).
_DEFAULT_LR = 1e-3
_DEFAULT_TOP_K = 2


def add_parser(sub) -> None:
    p = sub.add_parser(
        "moe", help="mixture of LoRA experts: train per-token top-k routers over frozen skill LoRAs",
        description="Wraps every adapted module with a router that reads the module's own input and mixes the "
                    "frozen LoRA experts per token (softmax over the top-k logits). Only the routers train, on the "
                    "same skill mix CAT uses. An MoE is not a LoRA (the update depends on each token's gates); it "
                    "is saved as moe_config.json (expert paths + SHA-256) + routers.safetensors.")
    add_combine_io_args(p, adapters_help="two or more PEFT skill LoRA folders (the experts)",
                        data_help="skill data spec(s), e.g. gsm8k codealpaca (repeatable)", out_help="output MoE folder")
    p.add_argument("--top-k", type=int, default=_DEFAULT_TOP_K, help=f"experts per token (default {_DEFAULT_TOP_K}; clipped to n)")
    p.add_argument("--router-layers", default="all", metavar="all|none|LIST",
                   help="decoder layers whose modules get routers, e.g. all (default) or 0,2,20-29; modules in "
                        "other layers mix the experts uniformly (1/n)")
    p.add_argument("--lr", type=float, default=_DEFAULT_LR, help=f"AdamW learning rate of the routers (default {_DEFAULT_LR:g})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the training mix (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch examples of similar length together (seeded; same examples per epoch, little "
                        "padding) (default: on)")
    p.add_argument("--schedule", choices=["linear", "constant"], default="linear", help="learning-rate schedule (default linear decay)")
    p.add_argument("--balance-loss", type=float, default=0.01, help="weight of the load-balancing loss (default 0.01; 0 = off)")
    p.add_argument("--router-init-std", type=float, default=0.01, help="std of the seeded router init (0 = uniform gates)")
    p.add_argument("--fraction", type=float, default=0.05, help="fraction of each skill dataset used (default 0.05, as CAT)")
    p.add_argument("--max-samples", type=int, default=None, help="cap on examples per skill dataset")
    p.add_argument("--cutoff-len", type=int, default=512, help="maximum tokens per example (default 512)")
    p.add_argument("--long-responses", choices=("skip", "keep"), default="skip",
                   help="records whose response does not fit --cutoff-len after the prompt: skip them "
                        "(replaced by other records) or keep them cut; counted either way (default: skip)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="part of the mix held out for the validation loss (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 autocast where the hardware has native bf16, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin experts")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..moe import read_moe_config, train_moe

    from ..io.hub import resolve_adapter_arg

    out = train_moe(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out, top_k=args.top_k, router_layers=args.router_layers,
                    lr=args.lr, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size,
                    grad_accum=args.grad_accum, group_by_length=args.group_by_length, schedule=args.schedule, balance_loss=args.balance_loss,
                    router_init_std=args.router_init_std, fraction=args.fraction, max_samples=args.max_samples,
                    cutoff_len=args.cutoff_len, long_responses=args.long_responses, val_fraction=args.val_fraction, seed=args.seed,
                    precision=args.precision, device=args.device, data_dir=args.data_dir, overwrite=args.overwrite,
                    allow_pickle=args.allow_pickle, progress=not args.quiet)
    cfg = read_moe_config(out)
    t = cfg["training"]
    vb, va = t.get("val_loss_before"), t.get("val_loss_after")
    print(f"wrote {out}  ({len(cfg['experts'])} experts, top-k {cfg['top_k']}, {len(cfg['routed_modules'])}/"
          f"{len(cfg['modules'])} modules routed, {t['resolved']['steps']} steps, {t['train_seconds']:.1f} s"
          + (f", val loss {vb:.4f} -> {va:.4f}" if vb is not None and va is not None else "") + ")")
    return 0
