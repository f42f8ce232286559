"""CAT: learnable concatenation of skill LoRAs, exported as one standard PEFT adapter.

Prabhakar et al. 2024 (*LoRA Soups*, arXiv 2410.13025, §3, Fig. 1): every adapted module m gets a
coefficient c_{m,i} per adapter i and computes W x + Σ_i c_{m,i} s_i B_i A_i x. The base model and
the skill LoRAs stay frozen; only the coefficients are trained, on a small mix of the *skill*
datasets (default 5 % of each), never on target-task data. The trained result is exactly a LoRA of
rank Σ r_i (A' = [A_1; ...; A_n], B' = [c_1 s_1 B_1 | ...], scaling 1).

The fused forward and the coefficient bookkeeping are in :mod:`lorasoups.train.fused`; this module
has the training loop, the export and :func:`train_cat` (the ``lorasoups cat`` command).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, DataError
from ..methods import register_method

# Defaults chosen by measurement on SmolLM2-135M with math + code skill LoRAs (README, "## CAT").
DEFAULT_LR = 5e-2
DEFAULT_EPOCHS = 1.0
DEFAULT_BATCH_SIZE = 8
DEFAULT_FRACTION = 0.05
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_CUTOFF_LEN = 256  # as skill-LoRA training (lorasoups train) and the paper
SCHEDULES = ("linear", "constant")


SMALL_MIX = 32  # fewer training examples than this in the CAT mix: warn (noisy coefficients)


# ----------------------------------------------------------------------------- small helpers


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other values are returned unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> tuple[str, str]:
    """The same choice as skill-LoRA training (:func:`lorasoups.train.sft.resolve_precision`):
    ``auto`` -> bf16 autocast on CPUs with native bf16 (``avx512_bf16``/``amx_bf16``) and on CUDA
    with bf16 support, else fp32 (fp16 on CUDA without bf16). Returns ``(precision, reason)``.

    Raises:
        ConfigError: unknown precision, or fp16 on CPU.
    """
    from .sft import resolve_precision as _resolve

    return _resolve(precision, "cuda" if device.startswith("cuda") else device)


def autocast_context(precision: str, device: str):
    """``torch.autocast`` to bf16 / fp16 for those precisions (weights, factors and coefficient
    logits stay fp32; only matmuls are lowered), else a no-op."""
    import torch

    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                              dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def check_fit_options(*, lr: float, steps: int | None, epochs: float, batch_size: int, grad_accum: int,
                      schedule: str, fraction: float | None, val_fraction: float) -> None:
    """Check the options shared by the small trainers of merge weights (CAT coefficients, MoE
    routers) before any model is loaded.

    Raises:
        ConfigError: naming the option: lr not a positive finite number, steps < 1, epochs ≤ 0
            when steps is None, batch_size or grad_accum < 1, unknown schedule, fraction outside
            (0, 1], val_fraction outside [0, 1).
    """
    if lr <= 0 or not math.isfinite(lr):
        raise ConfigError(f"--lr must be a positive number, got {lr}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be ≥ 1, got {steps}")
    if steps is None and not epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {epochs}")
    if batch_size < 1 or grad_accum < 1:
        raise ConfigError(f"--batch-size and --grad-accum must be ≥ 1, got {batch_size}, {grad_accum}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {fraction}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def lr_at(step: int, total: int, lr: float, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``: constant, or linear decay
    from ``lr`` to ``lr / total`` (never exactly 0, so the last step still moves)."""
    if schedule == "constant" or total <= 1:
        return lr
    if schedule == "linear":
        return lr * (total - step) / total
    raise ConfigError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def coefficient_stats(handle) -> dict[str, dict[str, float]]:
    """Per adapter: mean / min / max of the normalised coefficients over the groups where it is
    present, and the mean |c - c_initial|."""
    import torch

    from .fused import normalize_coefficients

    co = handle.coefficients
    with torch.no_grad():
        c = co().detach().float().cpu()  # (G, n)
        c0 = normalize_coefficients(handle.initial, co.mask.cpu(), co.normalize)  # (G, n)
        mask = co.mask.cpu()
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(handle.adapter_names):
        sel = mask[:, i]
        if not sel.any():
            continue
        ci, di = c[sel, i], (c[sel, i] - c0[sel, i]).abs()
        out[name] = {"mean": round(float(ci.mean()), 6), "min": round(float(ci.min()), 6),
                     "max": round(float(ci.max()), 6), "mean_abs_change": round(float(di.mean()), 6)}
    return out


def split_examples(examples: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle (seeded) and hold out ``round(val_fraction * N)`` examples (at least 1 when
    ``val_fraction > 0`` and N ≥ 2) for the validation loss of the mix. Returns (train, val)."""
    ex = list(examples)
    random.Random(seed).shuffle(ex)
    if val_fraction <= 0 or len(ex) < 2:
        return ex, []
    k = min(len(ex) - 1, max(1, round(val_fraction * len(ex))))
    return ex[k:], ex[:k]


def batches(examples: list[dict], batch_size: int, seed: int, group_by_length: bool = False):
    """Endless stream of lists of ``batch_size`` examples: seeded shuffle per epoch (epoch e uses
    seed + e); the last short batch of an epoch is kept.

    ``group_by_length``: the same shuffled examples of each epoch are cut into mega-batches of
    ``m · batch_size`` (m = min(50, N // (2 · batch_size)), at least 1), each sorted by length
    (``len(input_ids)``, longest first) and cut into batches, and the epoch's batches are then
    shuffled (same seed): every epoch still holds every example exactly once, but a batch holds
    examples of similar length, so little of it is padding (as transformers' ``LengthGroupedSampler``).
    """
    e = 0
    n = len(examples)
    mega = max(1, min(50, n // (2 * batch_size))) * batch_size
    while True:
        order = list(range(n))
        rng = random.Random(seed + e)
        rng.shuffle(order)
        if group_by_length:
            epoch = []
            for m in range(0, n, mega):
                part = sorted(order[m:m + mega], key=lambda j: -len(examples[j]["input_ids"]))
                epoch += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
            rng.shuffle(epoch)
        else:
            epoch = [order[k:k + batch_size] for k in range(0, n, batch_size)]
        for b in epoch:
            yield [examples[j] for j in b]
        e += 1


def mean_loss(model, examples: list[dict], pad_token_id: int, batch_size: int, precision: str, device: str) -> float:
    """Token-weighted mean next-token cross-entropy (nats) of ``model`` on ``examples`` (labels
    -100 ignored), no gradients."""
    import torch

    from .data import collate
    from .loss import lm_loss_sum

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for k in range(0, len(examples), batch_size):
            b = collate(examples[k:k + batch_size], pad_token_id)
            ids, am, labels = b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device)
            with autocast_context(precision, device):
                s, n = lm_loss_sum(model, {"input_ids": ids, "attention_mask": am, "labels": labels})
            total += float(s)
            count += n
    return total / max(count, 1)


def fit_coefficients(model, handle, train: list[dict], *, pad_token_id: int, lr: float, steps: int,
                     batch_size: int = DEFAULT_BATCH_SIZE, grad_accum: int = 1, schedule: str = "linear",
                     seed: int = 0, precision: str = "fp32", device: str = "cpu", log_every: int = 1,
                     group_by_length: bool = False,
                     callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Train the CAT coefficient logits with Adam on the causal-LM loss of ``train``.

    Only ``handle.coefficients.logits`` (G, n) is optimised; everything else is frozen.

    Args:
        train: tokenised examples ``{"input_ids": [...], "labels": [...]}``.
        steps: optimiser steps, each over ``grad_accum`` micro-batches of ``batch_size`` examples.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; factors and logits stay fp32).
        callback: called with every log record.

    Returns:
        log records ``{"step", "loss", "lr", "seconds", "coefficients": {adapter: stats}}`` (step 0 is
        the initial state, no loss); loss is the mean of the step's micro-batch losses (nats/token).
    """
    import torch

    from .data import collate
    from .loss import lm_loss_sum

    if not train:
        raise DataError("CAT: no training examples")
    params = [handle.coefficients.logits]
    opt = torch.optim.Adam(params, lr=lr)
    stream = batches(train, batch_size, seed, group_by_length)
    log = [{"step": 0, "loss": None, "lr": lr_at(0, steps, lr, schedule), "seconds": 0.0,
            "coefficients": coefficient_stats(handle)}]
    if callback:
        callback(log[-1])
    t0 = time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, schedule)
        opt.zero_grad(set_to_none=True)
        losses = []
        for _ in range(grad_accum):
            b = collate(next(stream), pad_token_id)
            labels = b["labels"].to(device)
            if not (labels[:, 1:] != -100).any():
                continue  # nothing to predict in this micro-batch (all prompt tokens)
            with autocast_context(precision, device):
                s, n = lm_loss_sum(model, {"input_ids": b["input_ids"].to(device),
                                           "attention_mask": b["attention_mask"].to(device), "labels": labels})
            loss = s / n
            if not torch.isfinite(loss):
                raise DataError(f"CAT: non-finite loss at step {step + 1}; try a smaller --lr")
            (loss / grad_accum).backward()
            losses.append(float(loss.detach()))
        if losses:
            opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, "loss": round(sum(losses) / len(losses), 6) if losses else None,
                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2),
                   "coefficients": coefficient_stats(handle)}
            log.append(rec)
            if callback:
                callback(rec)
    model.eval()
    return log


def plot_coefficients(table: dict[str, dict[str, dict[str, float]]], adapter_names: list[str], path: Path,
                      title: str = "") -> None:
    """Save ``coefficients.png``: final coefficient per decoder layer (mean over the layer's modules,
    band = min..max), one line per adapter; dashed = initial mean. Uses matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fused import layer_index

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    for name in adapter_names:
        per: dict[int, list[tuple[float, float]]] = {}
        for m, row in table.items():
            li = layer_index(m)
            if li is not None and name in row:
                per.setdefault(li, []).append((row[name]["initial"], row[name]["final"]))
        if not per:
            continue
        xs = sorted(per)
        fin = [[f for _, f in per[x]] for x in xs]
        ini = [sum(i for i, _ in per[x]) / len(per[x]) for x in xs]
        line, = ax.plot(xs, [sum(v) / len(v) for v in fin], marker="o", ms=3, label=name)
        ax.fill_between(xs, [min(v) for v in fin], [max(v) for v in fin], color=line.get_color(), alpha=0.15)
        ax.plot(xs, ini, ls="--", lw=0.8, color=line.get_color())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("coefficient c (final; dashed = initial)")
    ax.set_title(title or "CAT coefficients")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _load_records(adapters: Sequence[Any], allow_pickle: bool):
    from ..io.adapters import read_adapter
    from ..types import AdapterRecord

    return [a if isinstance(a, AdapterRecord) else read_adapter(a, allow_pickle=allow_pickle) for a in adapters]


def _is_examples(data: Sequence[Any]) -> bool:
    return bool(data) and all(isinstance(d, dict) and "input_ids" in d for d in data)


# ----------------------------------------------------------------------------- entry point

@register_method("cat", kind="learned", space="concat", reference="Prabhakar et al. 2024 (LoRA Soups), §3",
                 description="learnable concatenation: per-module coefficients on frozen skill LoRAs, trained on "
                             "a small skill-data mix, exported as one rank-Σr LoRA")
def train_cat(base: str, adapters: Sequence[Any], data: Sequence[Any] | None, out: str | os.PathLike, *,
              granularity: str = "module", normalize: str = "softmax", init: str = "uniform",
              lr: float = DEFAULT_LR, steps: int | None = None, epochs: float = DEFAULT_EPOCHS,
              batch_size: int = DEFAULT_BATCH_SIZE, grad_accum: int = 1, schedule: str = "linear",
              fraction: float | None = DEFAULT_FRACTION, max_samples: int | None = None,
              cutoff_len: int = DEFAULT_CUTOFF_LEN, group_by_length: bool = True,
              val_fraction: float = DEFAULT_VAL_FRACTION, skip_long_prompts: bool = True,
              long_responses: str = "skip", seed: int = 0, no_train: bool = False,
              precision: str = "auto", device: str = "auto", data_dir: str | None = None,
              overwrite: bool = False, allow_pickle: bool = False, log_every: int = 1,
              verbose: bool = False) -> Path:
    """Train CAT coefficients for n ≥ 2 skill LoRAs on a skill-data mix and export one PEFT adapter.

    Args:
        base: base model (embedded name, HF folder or hub id; see :func:`lorasoups.models.load_base`).
        adapters: n ≥ 2 PEFT adapter folders (or :class:`AdapterRecord` objects).
        data: skill data specs (``gsm8k``, ``codealpaca:fraction=0.1``, a file; see
            :func:`lorasoups.train.data.parse_data_spec`) mixed by
            :func:`~lorasoups.train.data.load_training_examples`, or already tokenised examples
            ``{"input_ids", "labels"}``. May be empty/None only with ``no_train``.
        out: output folder (written atomically; refused if it is or contains an input).
        granularity: ``module`` (one coefficient per adapter per module), ``layer`` (shared by a
            decoder layer's modules), ``global`` (one per adapter).
        normalize: ``softmax`` over the adapters of a group, or ``none`` (raw coefficients).
        init: ``uniform`` (1/n under softmax, 1 under none), ``random`` (standard-normal logits,
            seeded), a number, or n comma-separated numbers.
        lr: Adam learning rate of the coefficient logits.
        steps: optimiser steps; when None, ``epochs`` passes over the training part of the mix.
        batch_size, grad_accum: examples per micro-batch, micro-batches per step.
        group_by_length: length-bucketed micro-batches (:func:`batches`): same examples per epoch,
            little padding; changes which examples share a batch, not the data or the loss.
        schedule: ``linear`` decay or ``constant`` learning rate.
        fraction: fraction of each skill dataset used (paper: 5 %); ``max_samples`` caps each.
        val_fraction: part of the mix held out for the validation loss before/after training.
        skip_long_prompts: drop sampled records whose prompt does not fit ``cutoff_len`` (default)
            instead of failing.
        long_responses: ``skip`` (default) records whose response does not fit ``cutoff_len``
            after the prompt, or ``keep`` them cut; both counted in ``cat_options.json`` (``data_stats``)
            and printed (see :func:`lorasoups.train.data.load_training_data`).
        no_train: export the initial coefficients (the static controls); data is not needed.
        precision: ``auto`` (bf16 autocast on CUDA/CPUs with native bf16, else fp32), ``fp32``, ``bf16``.

    Returns:
        ``out``: a PEFT LoRA folder (coefficients folded into B, scaling 1) with
        ``cat_coefficients.json``, ``cat_log.jsonl``, ``coefficients.png`` and ``cat_options.json``.

    Raises:
        ConfigError: bad option values, fewer than 2 adapters, no data without ``no_train``.
        AdapterError: unreadable adapters or adapters that do not fit the base model.
        DataError: data specs that cannot be loaded or give no examples.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    import torch

    from ..io.adapters import save_adapter_files
    from ..models import load_base, resolve_base
    from ..paths import atomic_dir, check_not_input
    from ..provenance import provenance, sha256_dir
    from .fused import attach_cat, parse_init

    t_start = time.time()
    adapters = list(adapters)
    data = list(data or [])
    if len(adapters) < 2:
        raise ConfigError(f"CAT needs at least 2 adapters, got {len(adapters)}")
    check_fit_options(lr=lr, steps=steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                      schedule=schedule, fraction=fraction, val_fraction=val_fraction)
    if not data and not no_train:
        raise ConfigError("CAT trains on skill data: give --data SPEC (e.g. the skill datasets), or --no-train")
    parse_init(init, len(adapters))  # validate before loading anything
    paths_in = [a for a in adapters if isinstance(a, (str, os.PathLike))]
    check_not_input(out, paths_in)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")

    dev = resolve_device(device)
    prec, prec_reason = resolve_precision(precision, dev)
    records = _load_records(adapters, allow_pickle)
    torch.manual_seed(seed)
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    handle = attach_cat(model, records, granularity=granularity, normalize=normalize, init=init, seed=seed)

    # Data: the skill mix, split into train and a held-out validation part.
    train_ex: list[dict] = []
    val_ex: list[dict] = []
    data_stats = None
    if data and not no_train:
        if _is_examples(data):
            examples = data
        else:
            from .data import load_training_data

            td = load_training_data(data, tok, cutoff_len=cutoff_len, max_samples=max_samples,
                                    fraction=fraction, seed=seed, data_dir=data_dir,
                                    skip_long_prompts=skip_long_prompts, long_responses=long_responses)
            examples = td.examples
            data_stats = {"sources": [x.as_dict() for x in td.sources], **td.cut_summary()}
            for line in td.cut_report():
                print(f"cat: data: {line}", flush=True)
        if not examples:
            raise DataError(f"CAT: the data {data} gave no training examples")
        train_ex, val_ex = split_examples(examples, val_fraction, seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    say = (lambda s: print(s, flush=True)) if verbose else (lambda s: None)
    if not no_train and (len(train_ex) < SMALL_MIX or 0 < len(val_ex) < SMALL_MIX // 4):
        print(f"cat: warning: the training mix is small ({len(train_ex)} training, {len(val_ex)} held-out "
              f"examples); coefficients and the validation loss will be noisy (raise --fraction or "
              f"--max-samples, or give more data)", flush=True)
    n_steps = 0
    if not no_train:
        per_epoch = math.ceil(len(train_ex) / (batch_size * grad_accum))
        n_steps = int(steps) if steps is not None else max(1, math.ceil(epochs * per_epoch))
    val_before = val_after = None
    if val_ex:
        val_before = mean_loss(model, val_ex, pad, batch_size, prec, dev)
        say(f"cat: validation loss before {val_before:.4f} ({len(val_ex)} held-out examples)")
    log: list[dict] = []
    t_train = time.time()
    if not no_train:
        def cb(rec: dict) -> None:
            if rec["step"] and (rec["step"] % max(1, log_every) == 0 or rec["step"] == n_steps):
                co = " ".join(f"{k}={v['mean']:.3f}" for k, v in rec["coefficients"].items())
                say(f"cat: step {rec['step']}/{n_steps} loss {rec['loss']:.4f} lr {rec['lr']:.3g} mean c: {co}")

        log = fit_coefficients(model, handle, train_ex, pad_token_id=pad, lr=lr, steps=n_steps,
                               batch_size=batch_size, grad_accum=grad_accum, schedule=schedule, seed=seed,
                               group_by_length=bool(group_by_length),
                               precision=prec, device=dev, log_every=log_every, callback=cb)
    else:
        log = [{"step": 0, "loss": None, "lr": None, "seconds": 0.0, "coefficients": coefficient_stats(handle)}]
    train_s = time.time() - t_train
    if val_ex and not no_train:
        val_after = mean_loss(model, val_ex, pad, batch_size, prec, dev)
        say(f"cat: validation loss after {val_after:.4f}")

    table = handle.coefficient_table()
    factors = handle.export_factors()
    names = handle.adapter_names
    coef_doc = {
        "method": "cat",
        "granularity": granularity,
        "normalize": normalize,
        "init": handle.init if isinstance(handle.init, str) else list(handle.init),
        "adapters": [{"name": nm, "path": str(getattr(r, "source", None) or nm), "num_modules": len(r.modules)}
                     for nm, r in zip(names, records)],
        "groups": {g: {"logits_initial": [round(float(x), 8) for x in handle.initial[k]],
                       "logits_final": [round(float(x), 8) for x in handle.coefficients.logits.detach().cpu()[k]],
                       "present": [bool(x) for x in handle.coefficients.mask.cpu()[k]]}
                   for k, g in enumerate(handle.coefficients.groups)},
        "summary": log[-1]["coefficients"],
        "modules": table,
    }
    options = {
        "method": "cat",
        "base": base,
        "adapters": [str(a.source) if getattr(a, "source", None) else a.name for a in records],
        "adapter_sha256": [sha256_dir(a.source) if getattr(a, "source", None) else None for a in records],
        "data": [d if isinstance(d, str) else "<tokenised examples>" if isinstance(d, dict) else str(d) for d in data][:50],
        "options": {"granularity": granularity, "normalize": normalize, "init": init, "lr": lr, "steps": steps,
                    "epochs": epochs if steps is None else None, "batch_size": batch_size, "grad_accum": grad_accum,
                    "group_by_length": bool(group_by_length),
                    "schedule": schedule, "fraction": fraction, "max_samples": max_samples, "cutoff_len": cutoff_len,
                    "val_fraction": val_fraction, "skip_long_prompts": skip_long_prompts,
                    "long_responses": long_responses, "seed": seed,
                    "no_train": no_train, "precision": precision, "device": device},
        "resolved": {"precision": prec, "precision_reason": prec_reason, "device": dev, "steps": n_steps,
                     "train_examples": len(train_ex),
                     "val_examples": len(val_ex), "groups": len(handle.coefficients.groups),
                     "modules": len(handle.modules), "total_ranks": sorted({f.r for f in factors.values()})},
        "data_stats": data_stats,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "train_seconds": round(train_s, 2),
        "seconds_per_step": round(train_s / n_steps, 3) if n_steps else None,
        "total_seconds": None,
        "provenance": provenance(),
    }
    check_not_input(out, paths_in)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_adapter_files(tmp, factors, base_model=resolve_base(base))
        (tmp / "cat_coefficients.json").write_text(json.dumps(coef_doc, indent=2) + "\n", encoding="utf-8")
        (tmp / "cat_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
        title = f"CAT ({granularity}, {normalize}, init {init}{', no-train' if no_train else f', {n_steps} steps, lr {lr:g}'})"
        plot_coefficients(table, names, tmp / "coefficients.png", title)
        options["total_seconds"] = round(time.time() - t_start, 2)
        (tmp / "cat_options.json").write_text(json.dumps(options, indent=2) + "\n", encoding="utf-8")
        from ..io.card import data_checksums, write_model_card

        write_model_card(tmp, base_model=resolve_base(base), method="cat", description=title,
                         adapters=list(names),
                         coefficients=coef_doc.get("summary"),
                         data=data_checksums(list(data or []), data_dir),
                         metrics={"val_loss_before": val_before, "val_loss_after": val_after})
    say(f"cat: wrote {out}")
    return out
