"""The embedded base models side by side: SmolLM2-135M-Instruct and Gemma 3 270M.

For each model: folder size on disk, ``load_base`` time, parameter count, and forward tokens/s
(a full forward with logits, no gradient) in fp32 and under bf16 autocast, on the same random
token batch. The timed forwards alternate between the models (A, B, B, A, ...), so a machine
shared with other jobs slows both alike; the ratio column is Gemma / SmolLM2. Run::

    nice -n 10 python benchmarks/base_models.py                 # both models prepared (cached)
    python benchmarks/base_models.py --batch 4 --seq 256 --reps 3
"""

from __future__ import annotations

import argparse
import resource
import time


def folder_bytes(path) -> int:
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2, help="timed forwards per model and precision")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from lorasoups.models import load_base, prepare_model

    torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {}
    models = {}
    for name in args.models:
        folder = prepare_model(name)
        t = time.perf_counter()
        model, _ = load_base(name)
        rows[name] = {"disk GB": folder_bytes(folder) / 1e9, "load s": time.perf_counter() - t,
                      "params M": sum(p.numel() for p in model.parameters()) / 1e6}
        models[name] = model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (args.batch, args.seq), generator=g)   # ids valid in both vocabularies
    for prec in ("fp32", "bf16"):
        times = {n: [] for n in models}
        order = list(models)
        for rep in range(args.reps + 1):                 # rep 0: warm-up, not timed
            for name in (order if rep % 2 else order[::-1]):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    t = time.perf_counter()
                    models[name](input_ids=ids)
                    dt = time.perf_counter() - t
                if rep:
                    times[name].append(dt)
        for name, ts in times.items():
            rows[name][f"fwd {prec} tok/s"] = ids.numel() * len(ts) / sum(ts)
    keys = list(next(iter(rows.values())))
    names = list(rows)
    print(f"batch {args.batch} x {args.seq} tokens, {args.reps} timed forwards each, {args.threads} threads")
    head = f"{'':18s}" + "".join(f"{n:>16s}" for n in names) + ("        ratio" if len(names) == 2 else "")
    print(head)
    for k in keys:
        vals = [rows[n][k] for n in names]
        line = f"{k:18s}" + "".join(f"{v:16.2f}" for v in vals)
        if len(names) == 2:
            line += f"{vals[1] / vals[0]:13.2f}"
        print(line)
    print(f"peak RSS of this process (both models loaded): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
