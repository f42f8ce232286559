"""CAT training-step speed: fused module vs a per-adapter loop vs PEFT, measured side by side.

For n adapters of rank r on every attention and MLP projection of the base model, one training
step (forward + backward of the causal-LM loss on a batch of B x T random tokens; the optimiser
update of a few hundred coefficients is negligible and left out) is timed for:

  base        the frozen base alone (inputs require grad, so backward runs through every layer)
  fused       lorasoups' FusedConcatLinear: one matmul with the stacked A (Σr x d_in), a per-rank
              scale vector from the coefficients, one matmul with the stacked B (d_out x Σr)
  loop        a per-adapter Python loop like the LoRA Soups reference code: for each adapter
              y += c_i * s_i * lora_B_i(lora_A_i(x)), coefficients softmaxed per module
  peft        PEFT with the n adapters all active (base_model.set_adapter([...])), factors frozen
  single      PEFT with one LoRA of the same total rank n*r, factors frozen
  single_train  (with --train-single) the same LoRA with trainable factors, for reference

Variants are interleaved round by round (so drift on a shared machine hits all alike); the adapter
overhead of a variant is its step time minus the base step time of the same round, medians are
reported. Targets (issue 5): fused overhead <= 1/1.3 of the loop's at n = 4; fused total step
<= 1.15 x the single LoRA of equal total rank.

    python benchmarks/cat_speed.py                      # SmolLM2-135M, batch 8 x 256, n = 2 4 8, rank 16
    python benchmarks/cat_speed.py --n 4 --steps 2      # shorter
    python benchmarks/cat_speed.py --base tiny --seq 32 # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoopConcatLinear(nn.Module):
    """Reference-code style: one lora_A / lora_B nn.Linear pair per adapter, summed in a Python loop."""

    def __init__(self, base: nn.Linear, factors, scales):
        super().__init__()
        self.base = base
        self.lora_A = nn.ModuleList()
        self.lora_B = nn.ModuleList()
        for A, B in factors:
            a = nn.Linear(A.shape[1], A.shape[0], bias=False)
            b = nn.Linear(B.shape[1], B.shape[0], bias=False)
            a.weight = nn.Parameter(A.clone(), requires_grad=False)
            b.weight = nn.Parameter(B.clone(), requires_grad=False)
            self.lora_A.append(a)
            self.lora_B.append(b)
        self.scales = list(scales)
        self.logits = nn.Parameter(torch.zeros(len(factors)))

    def forward(self, x):
        y = self.base(x)
        w = torch.softmax(self.logits, dim=0)
        for i in range(len(self.scales)):
            y = y + self.lora_B[i](self.lora_A[i](x)) * self.scales[i] * w[i]
        return y


def swap(model: nn.Module, mapping: dict[str, nn.Module]) -> None:
    """Install ``mapping[path]`` at each module path of ``model``."""
    mods = dict(model.named_modules())
    for path, new in mapping.items():
        parent, _, child = path.rpartition(".")
        setattr(mods[parent] if parent else model, child, new)


def input_grad_hook(model: nn.Module):
    """Make the embedding output require grad, so a frozen model still runs a full backward."""
    return model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))


def step(model, ids, ctx) -> float:
    for p in model.parameters():
        p.grad = None
    t0 = time.perf_counter()
    with ctx():
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--n", type=int, nargs="+", default=[2, 4, 8], help="numbers of adapters")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed rounds per n (after one warm-up round)")
    ap.add_argument("--precision", default="auto", help="auto (as training) | fp32 | bf16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--train-single", action="store_true", help="also time the single LoRA with trainable factors")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)

    from peft import LoraConfig, get_peft_model

    from lorasoups.models import load_base
    from lorasoups.train.loop import autocast as autocast_context, resolve_precision
    from lorasoups.train.fused import attach_cat, detach_cat
    from lorasoups.types import AdapterRecord, LoraFactors

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prec, why = resolve_precision(args.precision, "cpu")
    ctx = lambda: autocast_context(prec, "cpu")  # noqa: E731
    print(f"base {args.base}  batch {args.batch} x {args.seq}  rank {args.rank}  precision {prec} ({why})  "
          f"threads {torch.get_num_threads()}  rounds {args.steps} (+1 warm-up)")

    base, _ = load_base(args.base)
    input_grad_hook(base)
    for p in base.parameters():
        p.requires_grad_(False)
    peft_base, _ = load_base(args.base)
    n_max, r = max(args.n), args.rank
    cfg = lambda rank: LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, lora_dropout=0.0)  # noqa: E731
    pm = get_peft_model(peft_base, cfg(r), adapter_name="a0")
    for i in range(1, n_max):
        pm.add_adapter(f"a{i}", cfg(r))
    for n in args.n:
        pm.add_adapter(f"single{n}", cfg(n * r))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    input_grad_hook(pm.get_base_model())
    # The same factors as AdapterRecords for the fused and loop variants.
    records = []
    for i in range(n_max):
        mods = {}
        for path, m in pm.get_base_model().named_modules():
            if hasattr(m, "lora_A") and f"a{i}" in getattr(m, "lora_A", {}):
                mods[path] = LoraFactors(A=m.lora_A[f"a{i}"].weight.detach().clone(),
                                         B=m.lora_B[f"a{i}"].weight.detach().clone(), scale=m.scaling[f"a{i}"])
        records.append(AdapterRecord(modules=mods, name=f"a{i}"))

    def set_peft(active):
        pm.base_model.set_adapter(active)
        for name, p in pm.named_parameters():
            p.requires_grad_(False)

    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.seq), generator=g)
    results = {}
    for n in args.n:
        handle = attach_cat(base, records[:n], init="uniform")
        fused_map = dict(handle.modules)
        detach_cat(base, handle)
        originals = handle.originals
        loop_map = {p: LoopConcatLinear(lin, [(records[i].modules[p].A, records[i].modules[p].B) for i in range(n)],
                                        [records[i].modules[p].scale for i in range(n)])
                    for p, lin in originals.items()}

        def run_base():
            swap(base, originals)
            return step(base, ids, ctx)

        def run_fused():
            swap(base, fused_map)
            base.cat_coefficients = handle.coefficients
            t = step(base, ids, ctx)
            del base.cat_coefficients
            swap(base, originals)
            return t

        def run_loop():
            swap(base, loop_map)
            t = step(base, ids, ctx)
            swap(base, originals)
            return t

        def run_peft():
            set_peft([f"a{i}" for i in range(n)])
            return step(pm, ids, ctx)

        def run_single():
            set_peft(f"single{n}")
            return step(pm, ids, ctx)

        def run_single_train():
            set_peft(f"single{n}")
            for name, p in pm.named_parameters():
                if f".single{n}." in name:
                    p.requires_grad_(True)
            return step(pm, ids, ctx)

        variants = {"base": run_base, "fused": run_fused, "loop": run_loop, "peft": run_peft, "single": run_single}
        if args.train_single:
            variants["single_train"] = run_single_train
        times = {k: [] for k in variants}
        for rnd in range(args.steps + 1):
            for k, fn in variants.items():
                t = fn()
                if rnd > 0:
                    times[k].append(t)
        over = {k: statistics.median([t - b for t, b in zip(times[k], times["base"])]) for k in variants if k != "base"}
        med = {k: statistics.median(v) for k, v in times.items()}
        res = {"step_s": med, "overhead_s": over,
               "fused_over_loop_overhead": over["fused"] / over["loop"] if over["loop"] > 0 else float("nan"),
               "fused_over_peft_overhead": over["fused"] / over["peft"] if over["peft"] > 0 else float("nan"),
               "fused_total_over_single_total": med["fused"] / med["single"],
               "loop_overhead_over_fused_overhead": over["loop"] / over["fused"] if over["fused"] > 0 else float("nan"),
               "rounds": {k: [round(x, 4) for x in v] for k, v in times.items()}}
        results[n] = res
        print(f"\nn = {n} adapters of rank {r} (total rank {n * r}), {len(originals)} modules")
        print(f"  {'variant':<13}{'step s':>9}{'overhead s':>12}")
        for k in variants:
            print(f"  {k:<13}{med[k]:>9.3f}{'' if k == 'base' else f'{over[k]:>12.3f}':>12}")
        print(f"  fused overhead / loop overhead   = {res['fused_over_loop_overhead']:.3f}"
              f"  (loop/fused = {res['loop_overhead_over_fused_overhead']:.2f}x; target fused <= 1/1.3 = 0.769 at n=4)")
        print(f"  fused overhead / peft overhead   = {res['fused_over_peft_overhead']:.3f}")
        print(f"  fused total / single LoRA total  = {res['fused_total_over_single_total']:.3f}  (target <= 1.15)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "precision": prec, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
