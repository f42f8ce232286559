"""``lorasoups train``: train a skill LoRA, or the DATA-MIX baseline with several ``--data``."""

from __future__ import annotations

import argparse

from .common import add_base_arg
import json
import os
from pathlib import Path

EPILOG = """\
data specs:
  NAME or FILE, optionally followed by :key=value,... with keys max_samples, fraction, weight, format.
  NAME is a catalogue dataset (`lorasoups ls datasets`): gsm8k, codealpaca, alpaca, mbpp, squad_v2_dev,
  prompt_format1/2/4, and the raw-text corpora dnd_manual and bio_passages. FILE is JSON, JSONL, CSV, TSV or
  Parquet with instruction/input/output, prompt/completion or chat `messages` records (or .txt raw text). Examples:
    --data gsm8k:max_samples=2000     --data codealpaca:fraction=0.5     --data my.jsonl
  Several --data train one LoRA on their union (DATA-MIX); weight=W (or --weights) resamples the mix
  so dataset i contributes N*W_i/sum(W) examples, N being the total of the per-dataset selections.
  A record whose response does not fit --cutoff-len after its prompt would lose the end of its answer
  (GSM8K's '#### n' line, the end-of-turn token): it is skipped and replaced by another record
  (--long-responses keep: kept cut). Skipped and cut records are counted on the console, in
  train_info.json ("data", "data_cuts") and in the first line of train_log.jsonl.

defaults:
  200 steps x 8 examples x <= 256 tokens, rank 8 / alpha 16 on q,k,v,o,gate,up,down projections,
  lr 5e-4 (10 warm-up steps, cosine), length-grouped batches (--no-group-by-length: random), bf16 autocast on CPUs with avx512_bf16/AMX (LoRA weights and
  optimizer state fp32). On SmolLM2-135M this learns a skill's answer format in about ten CPU minutes.

outputs:
  OUT/ is a standard PEFT adapter folder (adapter_config.json, adapter_model.safetensors) plus
  train_info.json (resolved options, data files with sha256, versions, wall time) and train_log.jsonl
  (a data line, then step, loss, lr, tokens_per_s). Checkpoints go to OUT's hidden sibling .OUT.work/ every --save-steps
  steps; after a crash or kill, rerun the same command with --resume. Runs under torchrun /
  accelerate launch with several processes (DDP; gloo on CPU); --batch-size is per process.
"""


def add_parser(sub) -> None:
    from ..train.options import TrainOptions

    p = sub.add_parser("train", help="train a skill LoRA (several --data: the DATA-MIX baseline)",
                       description="Train one LoRA adapter with PEFT and the Hugging Face Trainer.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    add_base_arg(g)
    g.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="training data spec (repeatable; see below)")
    g.add_argument("--out", required=True, help="output adapter folder")
    g.add_argument("--data-dir", default=None, help="folder of the catalogue datasets (default: $LORASOUPS_DATA or ../shared/data)")
    TrainOptions.add_arguments(p.add_argument_group("training options"))
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default auto)")
    r.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of an interrupted run")
    r.add_argument("--keep-checkpoints", action="store_true", help="keep the .OUT.work checkpoint folder after success")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    r.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> dict:
    """The ``train_lora`` keyword options given by parsed CLI arguments."""
    from ..train.options import TrainOptions

    return {**TrainOptions.from_args(args), "data_dir": args.data_dir}


def run(args: argparse.Namespace) -> int:
    from ..train.sft import train_lora

    out = train_lora(args.base, args.data, args.out, resume=args.resume, overwrite=args.overwrite,
                     keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress, threads=args.threads,
                     device=args.device, **options_from_args(args))
    info_path = Path(out) / "train_info.json"
    if os.environ.get("RANK", "0") == "0" and info_path.is_file():
        info = json.loads(info_path.read_text())
        print(f"saved {out}: {info['steps']} steps, loss {info['first_loss']} -> {info['final_loss']}, "
              f"{info['mean_tokens_per_s']} tokens/s, {info['precision']['resolved']}, {info['wall_time_s']} s")
    return 0
