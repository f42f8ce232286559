"""``lorasoups lorahub``: LoRA Hub (Huang et al. 2023) gradient-free search for one weight per
adapter on a few examples; writes the merged adapter as a standard PEFT folder."""

from __future__ import annotations

import argparse

from ..train.options import LoraHubOptions
from .common import add_combine_io_args, add_run_args, run_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lorahub", help="LoRA Hub: gradient-free search of one weight per adapter on K few-shot examples",
        description="LoRA Hub (Huang et al. 2023): nevergrad searches weights w (one per adapter) minimising the "
                    "cross-entropy of K few-shot examples + l1 * mean|w|. Each candidate is evaluated on the "
                    "already-wrapped model (weights swapped in place). Writes a PEFT adapter folder, "
                    "lorahub_weights.json and lorahub_trace.jsonl (one line per candidate).")
    add_combine_io_args(p, adapters_help="PEFT LoRA folders to weight",
                        data_help="few-shot data spec(s): catalogue name or file, e.g. gsm8k or my.json:max_samples=20",
                        out_help="output adapter folder")
    LoraHubOptions.add_arguments(p)
    add_run_args(p, quiet_help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import ConfigError
    from ..search.lorahub import WEIGHTS_FILE, run_lorahub

    if not args.data:
        raise ConfigError("LoRA Hub needs few-shot data: give --data SPEC")
    from ..io.hub import resolve_adapter_arg

    out = run_lorahub(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out,
                      progress=not args.quiet, **run_kwargs(args), **LoraHubOptions.from_args(args))
    info = json.loads((Path(out) / WEIGHTS_FILE).read_text(encoding="utf-8"))
    print(f"wrote {out}  (space {info['space']}, {info['options']['budget']} candidates, "
          f"{info['options']['examples']} examples, {info['seconds']:.1f} s)")
    print(f"  loss {info['loss']:.4f} = ce {info['ce']:.4f} + l1 {info['penalty']:.4f}   (base model ce {info['base_ce']:.4f})")
    for a in info["adapters"]:
        print(f"  {a['name']}: w = {a['weight']:+.4f}")
    return 0
