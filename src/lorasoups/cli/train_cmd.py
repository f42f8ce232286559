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
  prompt_format1/2/4, and the raw-text corpora dnd_manual and bio_passages. FILE is JSON or JSONL with
  instruction/input/output records (or .txt raw text). Examples:
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
    from ..train.sft import PRECISIONS, SCHEDULERS, TrainOptions

    d = TrainOptions()
    p = sub.add_parser("train", help="train a skill LoRA (several --data: the DATA-MIX baseline)",
                       description="Train one LoRA adapter with PEFT and the Hugging Face Trainer.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    add_base_arg(g)
    g.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="training data spec (repeatable; see below)")
    g.add_argument("--out", required=True, help="output adapter folder")
    g.add_argument("--data-dir", default=None, help="folder of the catalogue datasets (default: $LORASOUPS_DATA or ../shared/data)")
    g.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="DATA-MIX mixing weights, one per --data (default: plain union)")
    g.add_argument("--max-samples", type=int, default=None, help="at most this many examples from each --data (default: all)")
    g.add_argument("--fraction", type=float, default=None, help="keep this fraction of each --data (default: 1)")
    g.add_argument("--cutoff-len", type=int, default=d.cutoff_len, help="max tokens per example; raw text is chunked to it (default: %(default)s)")
    g.add_argument("--text-overlap", type=int, default=d.text_overlap, help="tokens shared by consecutive raw-text chunks (default: %(default)s)")
    g.add_argument("--train-on-inputs", action="store_true", help="also take the loss on prompt tokens (default: response only)")
    g.add_argument("--skip-long-prompts", action="store_true", help="drop records whose prompt does not fit --cutoff-len instead of failing")
    g.add_argument("--long-responses", choices=("skip", "keep"), default=d.long_responses,
                   help="records whose response does not fit --cutoff-len after the prompt: skip them (replaced by "
                        "other records; counted in train_info.json) or keep them cut (default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, help="hold out this fraction for a validation loss (default: %(default)s)")

    m = p.add_argument_group("LoRA")
    m.add_argument("--r", "--rank", dest="r", type=int, default=d.r, help="LoRA rank (default: %(default)s)")
    m.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="LoRA alpha; scale = alpha / r (default: %(default)s)")
    m.add_argument("--lora-dropout", type=float, default=d.lora_dropout, help="dropout on the LoRA input (default: %(default)s)")
    m.add_argument("--target-modules", default=",".join(d.target_modules),
                   help="comma-separated module names (default: %(default)s)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=d.learning_rate, help="peak learning rate (default: %(default)s)")
    o.add_argument("--max-steps", type=int, default=None, help=f"optimizer steps (default: {d.max_steps}, or whole --epochs if given)")
    o.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of --max-steps")
    o.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step and process (default: %(default)s)")
    o.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps (default: %(default)s)")
    o.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default: %(default)s)")
    o.add_argument("--lr-scheduler", choices=SCHEDULERS, default=d.lr_scheduler, help="(default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    o.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="gradient clipping (default: %(default)s)")
    o.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=d.group_by_length,
                   help="batch examples of similar length together (transformers' LengthGroupedSampler: same "
                        "examples per epoch, little padding; changes which examples share a batch, not the data, "
                        "steps or loss) (default: %(default)s)")
    o.add_argument("--seed", type=int, default=d.seed, help="seeds data sampling, LoRA init, dropout and order (default: %(default)s)")
    o.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default auto)")
    o.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="autocast precision; auto = bf16 on CPUs with avx512_bf16/AMX and on bf16 GPUs, "
                        "fp16 on other GPUs, else fp32 (default: %(default)s)")

    r = p.add_argument_group("run")
    r.add_argument("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps (default: %(default)s)")
    r.add_argument("--save-total-limit", type=int, default=d.save_total_limit, help="checkpoints kept (default: %(default)s)")
    r.add_argument("--logging-steps", type=int, default=d.logging_steps, help="log every N steps (default: %(default)s)")
    r.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of an interrupted run")
    r.add_argument("--keep-checkpoints", action="store_true", help="keep the .OUT.work checkpoint folder after success")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    r.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's choice)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> dict:
    """The ``train_lora`` keyword options given by parsed CLI arguments."""
    keys = ["r", "lora_alpha", "lora_dropout", "learning_rate", "epochs", "batch_size", "grad_accum",
            "cutoff_len", "warmup_steps", "lr_scheduler", "weight_decay", "max_grad_norm", "seed", "val_fraction",
            "max_samples", "fraction", "weights", "train_on_inputs", "text_overlap", "skip_long_prompts",
            "long_responses", "group_by_length", "precision", "save_steps", "save_total_limit", "logging_steps", "data_dir"]
    opts = {k: getattr(args, k) for k in keys}
    opts["target_modules"] = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    if args.max_steps is not None:
        opts["max_steps"] = args.max_steps
    return opts


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
