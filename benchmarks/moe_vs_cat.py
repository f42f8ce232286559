"""Why MoE routers train slower than CAT coefficients: one training step of each on the same batch.

Both wrap the same frozen base and the same frozen skill LoRAs (two adapters of rank ``--r`` on every
attention and MLP projection: random factors of the real shapes, or ``--adapters DIR DIR`` for real
ones) and run forward + backward of lorasoups' causal-LM loss under the same autocast:

  cat         CAT's FusedConcatLinear (one coefficient per adapter per module)
  moe         MoeLoraLinear with a router on every module (top-k 2 of 2, load-balancing loss on),
              the ``moe`` method's defaults
  moe_fixed   the MoE layers without routers (fixed 1/n mix): the MoE layer cost without the router
  moe_ckpt    ``moe`` with activation checkpointing (``gradient_checkpointing: true``)

Each step kind is timed round by round, interleaved (a shared CPU slows all alike); printed: median
seconds per step, ratio to ``cat``, and the rise of resident memory over the step's start (peak,
sampled every 2 ms) — the activations the backward pass keeps.

    python benchmarks/moe_vs_cat.py                             # SmolLM2-135M, batch 8 x 320
    python benchmarks/moe_vs_cat.py --batch 4 --seq 512 --steps 3   # the cpu preset's MoE micro-batch
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import RssPeak  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_records(model, n: int, r: int, seed: int = 0):
    """n adapter records with random factors (std 0.02) on every target module of ``model``."""
    from lorasoups.types import AdapterRecord, LoraFactors

    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        mods = {}
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in TARGETS:
                A = torch.randn(r, m.in_features, generator=g) * 0.02
                B = torch.randn(m.out_features, r, generator=g) * 0.02
                mods[name] = LoraFactors(A=A, B=B, scale=2.0)
        recs.append(AdapterRecord(modules=mods, name=f"random{i}"))
    return recs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--adapters", nargs="*", default=None, help="real PEFT adapter folders (default: 2 random)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=320)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--kinds", default="cat,moe,moe_fixed,moe_ckpt")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1 (the first round is a warm-up and not timed)")
    torch.set_num_threads(args.threads)

    from lorasoups.io.adapters import read_adapter
    from lorasoups.models import load_base
    from lorasoups.moe import attach_moe
    from lorasoups.moe.model import mean_aux_loss, router_parameters, set_token_mask
    from lorasoups.train.fused import attach_cat
    from lorasoups.train.loop import activation_checkpointing, autocast
    from lorasoups.train.loss import lm_loss_sum

    kinds = args.kinds.split(",")
    models = {}
    for kind in kinds:
        model, _ = load_base(args.base)
        recs = [read_adapter(p) for p in args.adapters] if args.adapters else random_records(model, 2, args.r)
        if kind == "cat":
            h = attach_cat(model, recs, init="uniform")
            params = [h.coefficients.logits]
            layers = None
        else:
            layers = attach_moe(model, recs, top_k=2, routed=None if kind != "moe_fixed" else [])
            params = router_parameters(layers)
            for p in params:
                p.requires_grad_(True)
            if not params:  # no router: the backward still runs through every layer, as with routers
                model.enable_input_require_grads()
        model.train()
        models[kind] = (model, params, layers)
    print(f"base={args.base} adapters={'given' if args.adapters else f'2 random, r {args.r}'} "
          f"batch {args.batch} x {args.seq} tokens, {args.precision}, {args.threads} threads; "
          f"trainable: " + ", ".join(f"{k} {sum(p.numel() for p in v[1])}" for k, v in models.items()))

    vocab = min(49000, next(iter(models.values()))[0].config.vocab_size)
    g = torch.Generator().manual_seed(1)
    times = {k: [] for k in kinds}
    rises = {k: [] for k in kinds}
    for step in range(args.steps + 1):
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
        labels = ids.clone()
        labels[:, : args.seq // 2] = -100  # prompt half unscored, as in SFT
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        order = kinds if step % 2 == 0 else kinds[::-1]
        for kind in order:
            model, params, layers = models[kind]
            if layers is not None:
                set_token_mask(layers, batch["attention_mask"], collect_aux=kind == "moe" or kind == "moe_ckpt")
            with RssPeak() as mem, activation_checkpointing(model, kind == "moe_ckpt"):
                t = time.perf_counter()
                with autocast(args.precision, "cpu"):
                    s, n = lm_loss_sum(model, batch)
                loss = s / n
                aux = mean_aux_loss(layers) if layers is not None else None
                if aux is not None:
                    loss = loss + 0.01 * aux
                loss.backward()
                dt = time.perf_counter() - t
            for p in params:
                p.grad = None
            if step:  # the first round warms up
                times[kind].append(dt)
                rises[kind].append(mem.rise)
    ref = statistics.median(times["cat"]) if "cat" in times else None
    print(f"\n{'step kind':<12}{'s/step':>9}{'x cat':>8}{'memory rise MiB':>18}")
    for kind in kinds:
        med = statistics.median(times[kind])
        print(f"{kind:<12}{med:>9.2f}{(med / ref if ref else float('nan')):>8.2f}{max(rises[kind]):>18.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
