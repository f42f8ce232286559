"""``lorasoups lorahub``: LoRA Hub (Huang et al. 2023) gradient-free search for one weight per
adapter on a few examples; writes the merged adapter as a standard PEFT folder."""

from __future__ import annotations

import argparse

from .common import add_combine_io_args


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
    p.add_argument("--budget", type=int, default=40, help="candidates evaluated by the search (default 40, as LoraHub)")
    p.add_argument("--space", choices=["delta", "factors"], default="delta",
                   help="delta: exact Σ w_i ΔW_i as a rank-sum LoRA (default); factors: the original's "
                        "(Σ w_i B_i)(Σ w_i A_i), equal ranks needed, inexact (cross terms)")
    p.add_argument("--l1", type=float, default=0.05, help="weight of the L1 penalty l1 * mean|w| (default 0.05)")
    p.add_argument("--bounds", type=float, nargs=2, default=[-1.5, 1.5], metavar=("LO", "HI"),
                   help="search box for every weight (default -1.5 1.5)")
    p.add_argument("--examples", type=int, default=5, help="K few-shot examples drawn (seeded) from --data (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seeds the example choice and the optimiser")
    p.add_argument("--optimizer", default="NGOpt", help="nevergrad optimiser name (default NGOpt)")
    p.add_argument("--init", type=float, default=0.0, help="initial value of every weight (default 0, as LoraHub)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per forward pass (default 4)")
    p.add_argument("--cutoff-len", type=int, default=512, help="maximum tokens per example (default 512)")
    p.add_argument("--long-responses", choices=("skip", "keep"), default="skip",
                   help="records whose response does not fit --cutoff-len after the prompt: skip them "
                        "(replaced by other records) or keep them cut; counted either way (default: skip)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin inputs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import ConfigError
    from ..search.lorahub import WEIGHTS_FILE, run_lorahub

    if not args.data:
        raise ConfigError("LoRA Hub needs few-shot data: give --data SPEC")
    from ..io.hub import resolve_adapter_arg

    out = run_lorahub(args.base, [resolve_adapter_arg(a) for a in args.adapters], args.data, args.out, budget=args.budget, space=args.space,
                      l1=args.l1, bounds=tuple(args.bounds), examples=args.examples, seed=args.seed,
                      optimizer=args.optimizer, init=args.init, batch_size=args.batch_size,
                      cutoff_len=args.cutoff_len, long_responses=args.long_responses, data_dir=args.data_dir, device=args.device,
                      overwrite=args.overwrite, allow_pickle=args.allow_pickle, progress=not args.quiet)
    info = json.loads((Path(out) / WEIGHTS_FILE).read_text(encoding="utf-8"))
    print(f"wrote {out}  (space {info['space']}, {info['options']['budget']} candidates, "
          f"{info['options']['examples']} examples, {info['seconds']:.1f} s)")
    print(f"  loss {info['loss']:.4f} = ce {info['ce']:.4f} + l1 {info['penalty']:.4f}   (base model ce {info['base_ce']:.4f})")
    for a in info["adapters"]:
        print(f"  {a['name']}: w = {a['weight']:+.4f}")
    return 0
