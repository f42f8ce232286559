"""Merge memory and speed benchmark (prints measurements; asserts nothing).

Part 1 — streaming: two random LoRA adapters of Llama-2-7B shapes (32 layers × 7 modules, r = 32,
hidden 4096, intermediate 11008, fp32 safetensors) are written to disk and merged with ``ties`` +
SVD step (``lorasoups.merge.driver.merge_adapters``) in a fresh process; the same merge of a
``--layers-small``-layer copy runs too, so the two peak RSS values show whether memory grows with
the number of layers.

Part 2 — PEFT: two random LoRAs on SmolLM2-135M (all 7 projection modules) merged with PEFT's
``add_weighted_adapter(combination_type="ties_svd")`` and with ours (same density, rank, exact SVD),
each in a fresh process; prints time and peak memory of each and their ratios, and how far apart the
two merged ΔW are.

Part 3 — aligned-basis merges: the same two 7B-shape adapters (``--layers`` layers) merged side by
side, each in a fresh process, with full-ΔW ``ties`` + SVD step, ``core_space`` (inner ``ties``) and
``knots`` (inner ``ties``), same density and output rank; prints time and peak memory of each and
the ratios full-ΔW TIES / aligned. The aligned methods never form a d_out × d_in matrix.

Every measurement runs in a child process (``--child ...``) so peaks do not mix. Peak RSS is the
process high-water mark (VmHWM); "op peak" is the high-water mark above the RSS just before the
timed call (reset through /proc/self/clear_refs).

    nice -n 10 python benchmarks/merge_memory.py                 # full 7B shape (minutes)
    nice -n 10 python benchmarks/merge_memory.py --layers 4      # quick check
    nice -n 10 python benchmarks/merge_memory.py --layers 2 --skip-peft --skip-streaming   # Part 3 only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA7B = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
           "gate_proj": (11008, 4096), "up_proj": (11008, 4096), "down_proj": (4096, 11008)}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


# --------------------------------------------------------------------------------- memory probes

def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _measure(fn) -> dict:
    """Run fn() and return seconds, RSS before, op peak (HWM − RSS before) and process peak, MiB."""
    import gc

    gc.collect()
    before = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    hwm = _status()["VmHWM"]
    return {"seconds": round(dt, 2), "rss_before_mib": before, "peak_rss_mib": hwm,
            "op_peak_mib": hwm - before if reset else None}


# ----------------------------------------------------------------------------------- adapters

def write_random_adapter(folder: Path, layers: int, r: int, alpha: float, seed: int) -> int:
    """A PEFT LoRA folder of Llama-2-7B shapes with random factors (streamed; constant memory)."""
    import torch

    from lorasoups.io.adapters import PREFIX
    from lorasoups.merge.stream import SafetensorsStreamWriter

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w = SafetensorsStreamWriter(folder / "adapter_model.safetensors")
    for layer in range(layers):
        for name, (d_out, d_in) in LLAMA7B.items():
            part = "self_attn" if name in _ATTN else "mlp"
            m = f"model.layers.{layer}.{part}.{name}"
            w.add(f"{PREFIX}{m}.lora_A.weight", torch.randn(r, d_in, generator=g) * 0.02)
            w.add(f"{PREFIX}{m}.lora_B.weight", torch.randn(d_out, r, generator=g) * 0.02)
    w.close()
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
           "r": r, "lora_alpha": alpha, "target_modules": sorted(LLAMA7B), "lora_dropout": 0.0, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return (folder / "adapter_model.safetensors").stat().st_size


# ------------------------------------------------------------------------------------- children

def child_ours(a: str, b: str, out: str, density: float, rank: int, svd: str, method: str = "ties",
               params: dict | None = None) -> dict:
    from lorasoups.merge.driver import merge_adapters

    p = {"density": density} if params is None else params
    res = _measure(lambda: merge_adapters([a, b], method, out, params=p, rank=rank, svd=svd, overwrite=True))
    info = json.loads((Path(out) / "merge_info.json").read_text())
    res["max_rel_fro_error"] = info["svd"]["max_rel_fro_error"] if info["svd"] else 0.0
    res["modules"] = info["num_modules"]
    return res


def child_peft(base: str, a: str, b: str, out: str, density: float, rank: int) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, a, adapter_name="a")
    model.load_adapter(b, adapter_name="b")
    res = _measure(lambda: model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "merged", combination_type="ties_svd",
                                                      svd_rank=rank, density=density))
    model.save_pretrained(out, selected_adapters=["merged"])
    return res


def _run_child(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, __file__, "--child", *args, "--threads", str(threads)], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _products_diff(x: str, y: str) -> float:
    """Max over modules of ‖ΔW_x − ΔW_y‖_F / ‖ΔW_y‖_F between two adapter folders."""
    from lorasoups.io.adapters import read_adapter

    rx, ry = read_adapter(x), read_adapter(y)
    worst = 0.0
    for m, fy in ry.modules.items():
        dy = fy.delta()
        worst = max(worst, float((rx.modules[m].delta() - dy).norm() / dy.norm()))
    return worst


# ------------------------------------------------------------------------------------ part 3

def part3(work: Path, args) -> None:
    """Full-ΔW TIES + SVD step vs core_space / knots (inner TIES) on the same 7B-shape adapters."""
    L, r = args.layers, args.rank
    print(f"\n== Part 3: aligned-basis merges on two Llama-2-7B-shape adapters ({L} layers × 7 modules, r={r}, "
          f"fp32); TIES density {args.density} everywhere; output rank {r} for all (dense TIES: SVD step, "
          f"{args.svd}; aligned: exact rank-{2 * r} LoRA, then the SVD step on its factors)")
    d = work / f"aligned_L{L}"
    t0 = time.time()
    size = write_random_adapter(d / "a", L, r, 2.0 * r, seed=1)
    write_random_adapter(d / "b", L, r, float(r), seed=2)
    print(f"  wrote 2 adapters ({2 * size / 2**20:.0f} MiB on disk) in {time.time() - t0:.1f}s")
    runs = [("ties (full ΔW) + SVD", "ties", {"density": args.density}),
            ("core_space + ties", "core_space", {"inner": "ties", "density": args.density}),
            ("knots + ties", "knots", {"inner": "ties", "density": args.density})]
    res = {}
    for label, method, params in runs:
        res[label] = _run_child(["method", str(d / "a"), str(d / "b"), str(d / f"out_{method}"), "0", str(r),
                                 args.svd, method, json.dumps(params)], args.threads)
        x = res[label]
        print(f"  {label:22s} {x['seconds']:7.1f}s ({x['seconds'] / x['modules']:.3f}s/module), op peak "
              f"{x['op_peak_mib']} MiB, process peak {x['peak_rss_mib']} MiB, max SVD-step error "
              f"{x['max_rel_fro_error']:.4f}")
    dense = res[runs[0][0]]
    for label, _, _ in runs[1:]:
        x = res[label]
        print(f"  {label}: {dense['seconds'] / x['seconds']:.1f}x faster than full-ΔW TIES + SVD; op peak "
              f"{x['op_peak_mib'] / max(dense['op_peak_mib'], 1):.3f} of it "
              f"(process peak {x['peak_rss_mib'] / dense['peak_rss_mib']:.3f})")
    shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="layers of the 7B-shape adapters (default 32)")
    ap.add_argument("--layers-small", type=int, default=2, help="layers of the comparison run (default 2)")
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank r and SVD rank K of the 7B part")
    ap.add_argument("--density", type=float, default=0.2, help="TIES density")
    ap.add_argument("--svd", choices=["exact", "randomized"], default="randomized",
                    help="SVD driver of the 7B part (exact SVD of 224 matrices up to 11008×4096 takes hours on one core)")
    ap.add_argument("--peft-rank", type=int, default=16, help="LoRA rank and SVD rank of the SmolLM2 part")
    ap.add_argument("--skip-7b", action="store_true", help="skip Parts 1 and 3 (the 7B shapes)")
    ap.add_argument("--skip-streaming", action="store_true", help="skip Part 1 (layer-count comparison)")
    ap.add_argument("--skip-peft", action="store_true", help="skip Part 2")
    ap.add_argument("--skip-aligned", action="store_true", help="skip Part 3 (knots / core_space)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the children (default 1)")
    ap.add_argument("--workdir", default=None, help="where adapters are written (default: a temp folder, removed)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, rest = args.child[0], args.child[1:]
        if kind == "ours":
            res = child_ours(rest[0], rest[1], rest[2], float(rest[3]), int(rest[4]), rest[5])
        elif kind == "method":
            res = child_ours(rest[0], rest[1], rest[2], 0.0, int(rest[4]), rest[5], method=rest[6],
                             params=json.loads(rest[7]))
        elif kind == "peft":
            res = child_peft(rest[0], rest[1], rest[2], rest[3], float(rest[4]), int(rest[5]))
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(res))
        return 0

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lorasoups-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"workdir {work}; children use {args.threads} thread(s)")
    try:
        if not args.skip_7b and not args.skip_streaming:
            print(f"\n== Part 1: ties (density {args.density}) + SVD step (rank {args.rank}, {args.svd}) on two "
                  f"Llama-2-7B-shape adapters (r={args.rank}, 7 modules/layer, fp32)")
            rows = []
            for L in sorted({args.layers_small, args.layers}):
                d = work / f"7b_L{L}"
                t0 = time.time()
                size = write_random_adapter(d / "a", L, args.rank, 2.0 * args.rank, seed=1)
                write_random_adapter(d / "b", L, args.rank, float(args.rank), seed=2)
                print(f"  wrote 2 adapters with {L} layers ({2 * size / 2**20:.0f} MiB on disk) in {time.time() - t0:.1f}s")
                res = _run_child(["ours", str(d / "a"), str(d / "b"), str(d / "out"), str(args.density),
                                  str(args.rank), args.svd], args.threads)
                res.update(layers=L, input_mib=round(2 * size / 2**20))
                rows.append(res)
                print(f"  layers {L:3d}: {res['modules']} modules, {res['seconds']:.1f}s "
                      f"({res['seconds'] / res['modules']:.2f}s/module), peak RSS {res['peak_rss_mib']} MiB "
                      f"(op peak {res['op_peak_mib']} MiB above {res['rss_before_mib']} MiB), inputs {res['input_mib']} MiB, "
                      f"max rel. Frobenius error {res['max_rel_fro_error']:.4f}")
                shutil.rmtree(d, ignore_errors=True)
            if len(rows) == 2:
                s, f = rows
                print(f"  peak RSS ratio {f['layers']} layers / {s['layers']} layers: "
                      f"{f['peak_rss_mib'] / s['peak_rss_mib']:.3f} (input size ratio {f['input_mib'] / max(s['input_mib'], 1):.1f})")

        if not args.skip_7b and not args.skip_aligned:
            part3(work, args)

        if not args.skip_peft:
            from lorasoups.models import prepare_model
            from lorasoups.testing import ALL_LLAMA_TARGETS, make_peft_adapter

            base = str(prepare_model("smollm2-135m"))
            r = args.peft_rank
            print(f"\n== Part 2: SmolLM2-135M, two adapters (r={r}, all 7 projections, 30 layers), ties density "
                  f"{args.density}, weights [1, 1], SVD rank {r} (exact)")
            d = work / "smol"
            pa = make_peft_adapter(base, d / "a", r=r, lora_alpha=2 * r, target_modules=ALL_LLAMA_TARGETS, seed=1)
            pb = make_peft_adapter(base, d / "b", r=r, lora_alpha=r, target_modules=ALL_LLAMA_TARGETS, seed=2)
            peft = _run_child(["peft", base, str(pa), str(pb), str(d / "peft_out"), str(args.density), str(r)], args.threads)
            ours = _run_child(["ours", str(pa), str(pb), str(d / "ours_out"), str(args.density), str(r), "exact"],
                              args.threads)
            print(f"  PEFT add_weighted_adapter(ties_svd): {peft['seconds']:.1f}s, op peak {peft['op_peak_mib']} MiB, "
                  f"process peak {peft['peak_rss_mib']} MiB (holds the base model)")
            print(f"  lorasoups merge ties --rank {r}:     {ours['seconds']:.1f}s, op peak {ours['op_peak_mib']} MiB, "
                  f"process peak {ours['peak_rss_mib']} MiB (reads adapters from disk, writes the folder)")
            print(f"  time ratio PEFT / ours: {peft['seconds'] / ours['seconds']:.2f}x; "
                  f"op-peak ratio PEFT / ours: {peft['op_peak_mib'] / max(ours['op_peak_mib'], 1):.2f}x; "
                  f"process-peak ratio: {peft['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x")
            peft_dir = d / "peft_out" / "merged"
            if (peft_dir / "adapter_config.json").is_file():
                print(f"  max relative Frobenius difference of ΔW, PEFT vs ours: "
                      f"{_products_diff(str(peft_dir), str(d / 'ours_out')):.2e}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
