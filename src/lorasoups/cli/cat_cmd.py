"""``lorasoups cat``: CAT, learnable concatenation of skill LoRAs (Prabhakar et al. 2024, §3),
exported as one standard PEFT adapter folder."""

from __future__ import annotations

import argparse

from .common import add_combine_io_args

# Kept in sync with lorasoups.train.cat (not imported here so that ``lorasoups --help`` stays fast).
_DEFAULT_LR = 5e-2
_DEFAULT_EPOCHS = 1.0


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
    p.add_argument("--granularity", choices=["module", "layer", "global"], default="module",
                   help="one coefficient per adapter per module (default), per decoder layer, or global")
    p.add_argument("--normalize", choices=["softmax", "none"], default="softmax",
                   help="softmax across adapters (reference code, default) or raw coefficients (paper formula)")
    p.add_argument("--init", default="uniform", metavar="uniform|random|VALUE",
                   help="uniform (1/n under softmax, 1 under none; default), random (standard-normal logits, "
                        "seeded), a number, or n comma-separated numbers (initial weights)")
    p.add_argument("--lr", type=float, default=_DEFAULT_LR, help=f"Adam learning rate of the coefficients (default {_DEFAULT_LR:g})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=_DEFAULT_EPOCHS, help=f"passes over the training mix (default {_DEFAULT_EPOCHS:g})")
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch examples of similar length together (seeded; same examples per epoch, little "
                        "padding) (default: on)")
    p.add_argument("--schedule", choices=["linear", "constant"], default="linear", help="learning-rate schedule (default linear decay)")
    p.add_argument("--fraction", type=float, default=0.05, help="fraction of each skill dataset used (default 0.05, the paper's 5%%)")
    p.add_argument("--max-samples", type=int, default=None, help="cap on examples per skill dataset")
    p.add_argument("--cutoff-len", type=int, default=256, help="maximum tokens per example (default 256, as lorasoups train)")
    p.add_argument("--long-responses", choices=("skip", "keep"), default="skip",
                   help="records whose response does not fit --cutoff-len after the prompt: skip them "
                        "(replaced by other records) or keep them cut; counted either way (default: skip)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the mix held out for the validation loss before/after (default 0.1)")
    p.add_argument("--keep-long-prompts", action="store_true",
                   help="do not skip records whose prompt alone exceeds --cutoff-len: stop with an error naming "
                        "the record instead (default: skip them, counted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="export the initial coefficients (static controls)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto = bf16 autocast where the hardware has native bf16, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin inputs")
    p.add_argument("--log-every", type=int, default=1, help="log every N steps (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..train.cat import train_cat

    from ..io.hub import resolve_adapter_arg

    out = train_cat(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out, granularity=args.granularity,
                    normalize=args.normalize, init=args.init, lr=args.lr, steps=args.steps, epochs=args.epochs,
                    batch_size=args.batch_size, grad_accum=args.grad_accum, group_by_length=args.group_by_length, schedule=args.schedule,
                    fraction=args.fraction, max_samples=args.max_samples, cutoff_len=args.cutoff_len, long_responses=args.long_responses,
                    val_fraction=args.val_fraction, skip_long_prompts=not args.keep_long_prompts, seed=args.seed,
                    no_train=args.no_train,
                    precision=args.precision, device=args.device, data_dir=args.data_dir,
                    overwrite=args.overwrite, allow_pickle=args.allow_pickle, log_every=args.log_every,
                    verbose=not args.quiet)
    opts = json.loads((Path(out) / "cat_options.json").read_text(encoding="utf-8"))
    summ = json.loads((Path(out) / "cat_coefficients.json").read_text(encoding="utf-8"))["summary"]
    vb, va = opts.get("val_loss_before"), opts.get("val_loss_after")
    print(f"wrote {out}  ({opts['resolved']['modules']} modules, {opts['resolved']['steps']} steps"
          + (f", val loss {vb:.4f} -> {va:.4f}" if vb is not None and va is not None else "") + ")")
    for name, s in summ.items():
        print(f"  {name}: mean c {s['mean']:.4f} (min {s['min']:.4f}, max {s['max']:.4f}, "
              f"mean |Δc| {s['mean_abs_change']:.4f})")
    return 0
