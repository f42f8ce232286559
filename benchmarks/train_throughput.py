"""Training throughput of ``lorasoups train`` on SmolLM2-135M, fp32 vs bf16, side by side.

For each precision it runs the real training path (:func:`lorasoups.train.sft.train_lora`: PEFT LoRA
r=8 on all attention/MLP projections, HF Trainer, AdamW) on raw-text chunks of exactly
``--seq-len`` tokens (no padding) with ``--batch-size`` sequences per step, reads the measured
tokens/s from ``train_log.jsonl`` (first ``--warmup`` steps dropped), and compares the achieved
FLOP/s with a large square matmul's FLOP/s in the same dtype, timed in the same run just before
and after (best of the two is the reference).

FLOPs per token of LoRA training with a frozen base (no weight-gradient matmuls for the base):
``4 · N_linear`` (forward 2N + input-gradient 2N, N = weights in every nn.Linear incl. lm_head)
``+ 6 · L · d · T`` (causal attention scores and weighted sum: forward 2·L·d·T, backward twice that;
half of the full-square count in PaLM, Chowdhery et al. 2022, app. B) ``+`` the LoRA matmuls
(6 flops per LoRA weight: forward, input grad, weight grad). Run::

    nice -n 10 python benchmarks/train_throughput.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def matmul_flops(n: int, dtype, reps: int = 3) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in ``dtype`` (best of ``reps`` after a warm-up)."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def flops_per_token(model_dir: str, seq_len: int, r: int, targets: list[str]) -> tuple[float, dict]:
    """Training FLOPs per token (see module docstring) and the counts used."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n_linear, n_lora = 0, 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            n_linear += mod.weight.numel()
            if name.rsplit(".", 1)[-1] in targets:
                n_lora += r * (mod.in_features + mod.out_features)
    L, d = cfg.num_hidden_layers, cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    total = 4 * n_linear + 6 * L * d * seq_len + 6 * n_lora
    return float(total), {"n_linear": n_linear, "n_lora": n_lora, "layers": L, "d_attn": d}


def corpus_file(folder: Path, data_dir: str | None) -> Path:
    """A raw-text corpus: the D&D manual from the data dir, else generated sentences."""
    from lorasoups.datasets import load_dataset
    from lorasoups.errors import LorasoupsError

    try:
        text = load_dataset("dnd_manual", data_dir)
    except LorasoupsError:
        text = " ".join(f"Sentence number {i} talks about rule {i % 97} and dice {i % 20}." for i in range(20000))
    p = folder / "corpus.txt"
    p.write_text(str(text))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8, help="training steps per precision (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the reference square matmul")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from lorasoups.models import resolve_base
    from lorasoups.train.sft import DEFAULT_TARGETS, train_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    base_dir = resolve_base(args.base)
    r = 8
    fpt, counts = flops_per_token(base_dir, args.seq_len, r, DEFAULT_TARGETS)
    print(f"model {args.base}: {counts}; training FLOPs/token = {fpt / 1e9:.3f} GFLOP "
          f"(batch {args.batch_size} x {args.seq_len}, {torch.get_num_threads()} threads)")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_file(Path(tmp), args.data_dir)
        need = args.batch_size * args.steps
        for prec in args.precisions:
            mm_before = matmul_flops(args.matmul_n, dtypes[prec])
            out = Path(tmp) / f"lora-{prec}"
            train_lora(args.base, [f"{corpus}:max_samples={need}"], out, r=r, lora_alpha=16, max_steps=args.steps,
                       batch_size=args.batch_size, cutoff_len=args.seq_len, text_overlap=0, precision=prec,
                       save_steps=10 ** 6, progress=False, warmup_steps=0)
            mm_after = matmul_flops(args.matmul_n, dtypes[prec])
            log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
            steady = [x["tokens_per_s"] for x in log[args.warmup:]] or [x["tokens_per_s"] for x in log]
            tps = sum(steady) / len(steady)
            achieved = tps * fpt
            ref = max(mm_before, mm_after)
            rows.append((prec, tps, achieved, ref, mm_before, mm_after))
    print(f"\n{'precision':>9} {'tokens/s':>9} {'train TFLOP/s':>13} {'matmul TFLOP/s':>14} {'fraction':>8}   (matmul before/after)")
    for prec, tps, ach, ref, b, a in rows:
        print(f"{prec:>9} {tps:9.1f} {ach / 1e12:13.3f} {ref / 1e12:14.3f} {ach / ref:8.2f}   ({b / 1e12:.3f}/{a / 1e12:.3f})")
    by = {p: t for p, t, *_ in rows}
    if "fp32" in by and "bf16" in by:
        print(f"\nbf16 / fp32 training tokens/s: {by['bf16'] / by['fp32']:.2f}x")


if __name__ == "__main__":
    main()
