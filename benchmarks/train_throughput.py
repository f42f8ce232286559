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

``--sft`` compares, on the cpu preset's real SFT data (gsm8k + codealpaca, prompt tokens masked,
cutoff 320), one training step of a plain PEFT + AdamW loop (``model(**batch).loss``: full
(batch, seq, vocab) logits) with the same step using lorasoups' loss
(:func:`lorasoups.train.loss.lm_loss_sum`: head at response positions only, chunked fp32 CE). Two
identically initialised PEFT models see the same batches, interleaved step by step (order
alternating), so a shared CPU slows both alike; it prints per-step seconds, the loss of both
curves, the tokens/s ratio, peak RSS growth of each step kind, and the padding fraction of random
batches vs length-grouped batches (transformers' ``LengthGroupedSampler``)::

    nice -n 10 python benchmarks/train_throughput.py --sft --steps 6

``--sft-order`` compares, on the same data, one epoch of random batches (what the Trainer's
``RandomSampler`` gives) with one epoch of length-grouped batches (``LengthGroupedSampler``, what
``train --group-by-length`` gives): both cover the same examples in the same number of steps. Two
identically initialised PEFT models (lorasoups' loss, AdamW) train on ``--steps`` batches drawn at the
same random positions of their epoch, interleaved step by step (order alternating), so the mean step
time estimates the epoch's wall time without bias. It prints the padding fraction of each epoch,
examples/s, tokens/s counting real tokens and counting padded positions, the estimated epoch time,
and the loss of both models on the same fixed 32 examples before and after::

    nice -n 10 python benchmarks/train_throughput.py --sft-order --steps 16
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


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Padded positions / all positions when each batch is right-padded to its longest example."""
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    tot = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return pad / tot


class RssPeak:
    """Peak resident memory (MiB) above the value at entry, sampled from /proc every 2 ms in a thread."""

    def __enter__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        self.start = self._now()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _now(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._now())
        self.rise = self.peak - self.start


def sft_compare(args) -> None:
    """Plain PEFT loop vs lorasoups' loss on the same SFT batches, interleaved (see module docstring)."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lorasoups.models import load_tokenizer, resolve_base
    from lorasoups.train.data import collate, load_training_data
    from lorasoups.train.loss import lm_loss_sum
    from lorasoups.train.options import TrainOptions
    DEFAULT_TARGETS = TrainOptions().target_modules

    base_dir = resolve_base(args.base)
    tok = load_tokenizer(base_dir)
    td = load_training_data(["gsm8k:max_samples=512", "codealpaca:max_samples=512"], tok, cutoff_len=320,
                            data_dir=args.data_dir)
    exs = td.examples
    lengths = [len(e["input_ids"]) for e in exs]
    bs = args.batch_size
    order = list(range(len(exs)))
    random.Random(0).shuffle(order)
    rand_batches = [order[k:k + bs] for k in range(0, len(order) - bs + 1, bs)]
    g = torch.Generator().manual_seed(0)
    grouped = list(LengthGroupedSampler(bs, lengths=lengths, generator=g))
    grp_batches = [grouped[k:k + bs] for k in range(0, len(grouped) - bs + 1, bs)]
    n_resp = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in exs)
    print(f"data: {len(exs)} examples, mean length {sum(lengths) / len(lengths):.1f} tokens, "
          f"response tokens {n_resp / sum(lengths):.2f} of all")
    print(f"padding fraction, batch {bs}: random batches {padding_fraction(lengths, rand_batches):.3f}, "
          f"length-grouped {padding_fraction(lengths, grp_batches):.3f}")

    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.sft_precision]
    models, opts = [], []
    for _ in range(2):
        m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        torch.manual_seed(0)
        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=DEFAULT_TARGETS,
                                         bias="none", task_type="CAUSAL_LM"))
        m.train()
        models.append(m)
        opts.append(torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4))

    def step(kind: str, b: dict) -> tuple[float, float, float]:
        m, opt = models[kind == "lean"], opts[kind == "lean"]
        with RssPeak() as mem:
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                if kind == "plain":
                    loss = m(**b).loss
                else:
                    s, n = lm_loss_sum(m, b)
                    loss = s / n
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t
            loss_v = float(loss.detach())
            del loss
        return dt, loss_v, mem.rise

    rows = []
    for k in range(args.steps):
        b = collate([exs[i] for i in rand_batches[k]], tok.pad_token_id)
        ntok = int(b["attention_mask"].sum())
        first, second = ("plain", "lean") if k % 2 == 0 else ("lean", "plain")
        r = {first: step(first, b), second: step(second, b)}
        rows.append((k + 1, ntok, r["plain"], r["lean"]))
        print(f"step {k + 1}: {ntok} tokens; plain {r['plain'][0]:.2f} s loss {r['plain'][1]:.4f}; "
              f"lorasoups {r['lean'][0]:.2f} s loss {r['lean'][1]:.4f}", flush=True)
    steady = rows[args.warmup:] or rows
    tp = sum(x[1] for x in steady) / sum(x[2][0] for x in steady)
    tl = sum(x[1] for x in steady) / sum(x[3][0] for x in steady)
    print(f"\n{args.sft_precision}, batch {bs}, {torch.get_num_threads()} threads, steps {args.warmup + 1}..{args.steps}:")
    print(f"  plain PEFT + AdamW loop: {tp:8.1f} tokens/s")
    print(f"  lorasoups loss:          {tl:8.1f} tokens/s   ratio {tl / tp:.2f}x")
    print(f"  max |loss difference| over the curve: {max(abs(x[2][1] - x[3][1]) for x in rows):.2e} nats")
    print(f"  peak RSS rise over a step's start (max over steps): plain {max(x[2][2] for x in rows):.0f} MiB, "
          f"lorasoups {max(x[3][2] for x in rows):.0f} MiB")


def sft_order_compare(args) -> None:
    """Random vs length-grouped batches of one epoch, interleaved (see module docstring)."""
    import random

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lorasoups.models import load_tokenizer, resolve_base
    from lorasoups.train.data import collate, load_training_data
    from lorasoups.train.loss import lm_loss_sum
    from lorasoups.train.options import TrainOptions
    DEFAULT_TARGETS = TrainOptions().target_modules

    base_dir = resolve_base(args.base)
    tok = load_tokenizer(base_dir)
    td = load_training_data(["gsm8k:max_samples=512", "codealpaca:max_samples=512"], tok, cutoff_len=320,
                            data_dir=args.data_dir, skip_long_prompts=True)
    exs = td.examples
    lengths = [len(e["input_ids"]) for e in exs]
    bs = args.batch_size
    torch.manual_seed(0)
    order = torch.randperm(len(exs)).tolist()  # what RandomSampler draws
    grouped = list(LengthGroupedSampler(bs, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    assert sorted(grouped) == sorted(order) == list(range(len(exs)))
    epochs = {"random": [order[k:k + bs] for k in range(0, len(order), bs)],
              "grouped": [grouped[k:k + bs] for k in range(0, len(grouped), bs)]}
    n_batches = len(epochs["random"])
    print(f"data: {len(exs)} examples, {sum(lengths)} tokens, {n_batches} batches of {bs} per epoch")
    for kind, bl in epochs.items():
        print(f"  {kind:8s} epoch: padding fraction {padding_fraction(lengths, bl):.3f}, "
              f"padded positions {sum(max(lengths[i] for i in b) * len(b) for b in bl)}")
    pick = random.Random(1).sample(range(n_batches), min(args.steps, n_batches))
    probe = collate([exs[i] for i in random.Random(2).sample(range(len(exs)), 32)], tok.pad_token_id)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[args.sft_precision]
    models, optims = {}, {}
    for kind in epochs:
        m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        torch.manual_seed(0)
        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=DEFAULT_TARGETS,
                                         bias="none", task_type="CAUSAL_LM"))
        models[kind] = m
        optims[kind] = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-4)

    def probe_loss(m) -> float:
        m.eval()
        tot, n = 0.0, 0
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            for k in range(0, 32, 8):
                s, c = lm_loss_sum(m, {key: v[k:k + 8] for key, v in probe.items()})
                tot, n = tot + float(s), n + int(c)
        m.train()
        return tot / n

    before = {k: probe_loss(m) for k, m in models.items()}
    stats = {k: {"t": 0.0, "ex": 0, "tok": 0, "pos": 0} for k in epochs}
    for j, bi in enumerate(pick):
        kinds = list(epochs) if j % 2 == 0 else list(epochs)[::-1]
        line = []
        for kind in kinds:
            b = collate([exs[i] for i in epochs[kind][bi]], tok.pad_token_id)
            m, opt = models[kind], optims[kind]
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                s, n = lm_loss_sum(m, b)
                loss = s / n
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t
            st = stats[kind]
            if j >= args.warmup:
                st["t"] += dt
                st["ex"] += b["input_ids"].shape[0]
                st["tok"] += int(b["attention_mask"].sum())
                st["pos"] += b["input_ids"].numel()
            line.append(f"{kind} {tuple(b['input_ids'].shape)} {dt:.2f} s loss {float(loss.detach()):.3f}")
        print(f"step {j + 1} (batch {bi}): " + "; ".join(line), flush=True)
    after = {k: probe_loss(m) for k, m in models.items()}
    print(f"\n{args.sft_precision}, batch {bs}, {torch.get_num_threads()} threads, "
          f"{len(pick) - args.warmup} timed steps each (batches at the same random epoch positions):")
    eps = {}
    for kind, st in stats.items():
        eps[kind] = st["ex"] / st["t"]
        print(f"  {kind:8s}: {eps[kind]:6.2f} examples/s, {st['tok'] / st['t']:7.1f} real tokens/s, "
              f"{st['pos'] / st['t']:7.1f} padded positions/s, epoch ≈ {len(exs) / eps[kind] / 60:.1f} min; "
              f"probe loss {before[kind]:.4f} -> {after[kind]:.4f}")
    print(f"  grouped / random examples/s: {eps['grouped'] / eps['random']:.2f}x")


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
    ap.add_argument("--sft", action="store_true", help="plain PEFT loop vs lorasoups' loss on SFT data, interleaved")
    ap.add_argument("--sft-precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--sft-order", action="store_true", help="random vs length-grouped batches of one epoch, interleaved")
    args = ap.parse_args()
    if args.sft_order:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        sft_order_compare(args)
        return
    if args.sft:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        sft_compare(args)
        return

    import torch

    from lorasoups.models import resolve_base
    from lorasoups.train.sft import train_lora
    from lorasoups.train.options import TrainOptions
    DEFAULT_TARGETS = TrainOptions().target_modules

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
