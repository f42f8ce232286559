"""GPU check (issue #16): train, merge and evaluate on CUDA with the tiny random Llama, and compare the
CUDA likelihoods (bf16 autocast) with the same evaluation on the CPU (fp32).

Run on a CUDA machine (needs the project's dependencies; gguf, nevergrad, rouge-score and bubblewrap
are not used):

    PYTHONPATH=src python benchmarks/gpu_check.py                 # --device cuda
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu    # dry run of the same steps on a CPU

Steps (every step prints one PASS/FAIL line; exit status 1 if any FAIL):
 1. the device resolves (``lorasoups.devices.resolve_device``) and bf16 support is reported;
 2. ``lorasoups train --device DEV`` trains two LoRAs a few steps each (precision auto: bf16 on a bf16
    GPU); train_info.json records the device; the loss is finite;
 3. ``lorasoups merge --method linear`` merges them (CPU math, as always);
 4. ``lorasoups eval --device DEV --precision bf16 --no-generate`` (likelihood metrics of the
    qabot_dnd task on a small hand-made data file) and the same with ``--device cpu --precision fp32``;
    the per-item NLLs must agree within ``--tol`` (relative, default 2e-2: bf16 autocast with the output
    projection in fp32) and ``--device DEV --precision fp32`` within 1e-4 (same math, other hardware);
 5. greedy generation of a few tokens on DEV (bf16) runs; agreement with the CPU is reported, not
    required (a random model's near-ties can flip under bf16).
Everything goes to a temporary folder (``--keep DIR`` to keep it) and a temporary LORASOUPS_HOME.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

QA = [
    {"instruction": "Which die is rolled for initiative?", "answer": "A d20 is rolled.",
     "output": "The correct answer is A d20 is rolled.", "context": "Initiative uses a d20."},
    {"instruction": "What does a rogue gain at 2nd level?", "answer": "Cunning Action",
     "output": "The correct answer is Cunning Action", "context": "Rogues gain Cunning Action."},
    {"instruction": "Name the plane of fire.", "answer": "The Elemental Plane of Fire",
     "output": "The correct answer is The Elemental Plane of Fire", "context": "Planes of existence."},
    {"instruction": "How many hit dice does a level 3 fighter have?", "answer": "Three d10",
     "output": "The correct answer is Three d10", "context": "Fighters use d10 hit dice."},
]

RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def cli(*argv: str) -> tuple[int, str]:
    """Run ``lorasoups ARGV`` in-process; return (exit status, captured stderr tail)."""
    from lorasoups.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()[-1500:]


def item_nlls(results_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (results_dir / "qabot_dnd" / "samples.jsonl").read_text().splitlines() if x.strip()]
    out = []
    for r in rows:
        v = (r.get("scores") or {}).get("nll_gold")
        out.append(float(v) if v is not None else math.nan)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="device under test (default cuda; cpu = dry run)")
    ap.add_argument("--steps", type=int, default=6, help="training steps per LoRA (default 6)")
    ap.add_argument("--tol", type=float, default=2e-2, help="relative NLL tolerance bf16 vs fp32 (default 2e-2)")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lorasoups-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LORASOUPS_HOME"] = str(work / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.time()

    import torch

    from lorasoups.devices import resolve_device
    from lorasoups.models import prepare_model

    try:
        dev = resolve_device(args.device)
    except Exception as e:  # noqa: BLE001
        report("device", False, str(e))
        return 1
    bf16 = torch.cuda.is_bf16_supported() if dev.startswith("cuda") else None
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "CPU"
    report("device", True, f"{dev} ({name}); torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {bf16}")
    base = str(prepare_model("tiny"))

    # data: two skills and a likelihood task file at the catalogue path of qabot_dnd
    data = work / "data"
    (data / "lora_soups/test_datasets/qa").mkdir(parents=True, exist_ok=True)
    (data / "lora_soups/test_datasets/qa/test.json").write_text(json.dumps(QA))
    skills = {}
    for k, words in (("colours", ["RED", "BLUE", "GREEN", "GOLD"]), ("numbers", ["ONE", "TWO", "SIX", "TEN"])):
        f = work / f"{k}.json"
        f.write_text(json.dumps([{"instruction": f"Say {k} {i % 4}.", "input": "", "output": words[i % 4] + "!"}
                                 for i in range(32)]))
        skills[k] = f

    # 2. train on the device
    adapters = []
    for k, f in skills.items():
        out = work / f"lora_{k}"
        rc, err = cli("train", "--base", base, "--data", str(f), "--out", str(out), "--max-steps", str(args.steps),
                      "--batch-size", "4", "--cutoff-len", "64", "--learning-rate", "5e-3", "--warmup-steps", "1",
                      "--save-steps", "1000", "--no-progress", "--device", dev, "--overwrite")
        if rc != 0:
            report(f"train {k}", False, err.strip().splitlines()[-1] if err.strip() else f"exit {rc}")
            return finish(work, args.keep, t0)
        info = json.loads((out / "train_info.json").read_text())
        p = info["precision"]
        ok = p["device"] == dev and info["final_loss"] is not None and math.isfinite(info["final_loss"])
        report(f"train {k}", ok, f"device {p['device']}, precision {p['resolved']}, loss {info['first_loss']} -> "
                                 f"{info['final_loss']}, {info['wall_time_s']} s")
        adapters.append(out)

    # 3. merge
    merged = work / "merged"
    rc, err = cli("merge", "--method", "linear", "--adapters", *map(str, adapters), "--weights", "0.5", "0.5",
                  "--out", str(merged), "--quiet", "--overwrite")
    if not report("merge linear", rc == 0 and (merged / "adapter_model.safetensors").is_file(),
                  "" if rc == 0 else err.strip()[-300:]):
        return finish(work, args.keep, t0)

    # 4. likelihoods on the device (bf16 and fp32) vs CPU fp32
    runs = {"cpu_fp32": ("cpu", "fp32"), "dev_bf16": (dev, "bf16"), "dev_fp32": (dev, "fp32")}
    nlls = {}
    for label, (d, prec) in runs.items():
        out = work / f"eval_{label}"
        rc, err = cli("eval", "--base", base, "--adapter", str(merged), "--task", "qabot_dnd", "--no-generate",
                      "--data-dir", str(data), "--shots", "0", "--device", d, "--precision", prec,
                      "--out", str(out), "--overwrite", "--quiet")
        if rc != 0:
            report(f"eval {label}", False, err.strip()[-300:])
            return finish(work, args.keep, t0)
        doc = json.loads((out / "qabot_dnd" / "results.json").read_text())
        nlls[label] = item_nlls(out)
        report(f"eval {label}", doc["model"].get("device") == d and all(math.isfinite(x) for x in nlls[label]),
               f"device {doc['model'].get('device')}, bf16 autocast {doc['model'].get('bf16_autocast')}, "
               f"nll_gold {doc['tasks']['qabot_dnd']['metrics']['nll_gold']['value']:.5f}")
    ref = nlls["cpu_fp32"]
    for label, tol in (("dev_bf16", args.tol), ("dev_fp32", 1e-4)):
        rel = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(nlls[label], ref))
        report(f"nll {label} vs cpu_fp32", len(nlls[label]) == len(ref) and rel <= tol,
               f"max relative difference {rel:.2e} (tolerance {tol:g}) over {len(ref)} items")

    # 5. greedy generation on the device
    from lorasoups.eval.generate import HFGenerator
    from lorasoups.eval.model import load_eval_model

    prompts = [f"Say colours {i}." for i in range(4)]
    outs = {}
    for label, (d, b) in (("cpu", ("cpu", False)), ("dev", (dev, True))):
        model, tok, _ = load_eval_model(base, str(merged), device=d)
        gen = HFGenerator(model, tok, batch_size=4, bf16=b)
        outs[label] = gen.generate(prompts, max_new_tokens=8)
        del model, gen
    same = sum(a == b for a, b in zip(outs["cpu"], outs["dev"]))
    report("generate on device (bf16)", len(outs["dev"]) == len(prompts),
           f"{same}/{len(prompts)} completions identical to CPU fp32 (informational)")
    return finish(work, args.keep, t0)


def finish(work: Path, keep: str | None, t0: float) -> int:
    fails = [n for n, ok, _ in RESULTS if not ok]
    print(f"{'FAIL' if fails else 'PASS'} gpu_check: {len(RESULTS) - len(fails)}/{len(RESULTS)} checks passed "
          f"in {time.time() - t0:.1f} s" + (f"; failed: {', '.join(fails)}" if fails else ""), flush=True)
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
