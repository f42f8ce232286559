"""CAT: learnable concatenation of skill LoRAs, exported as one standard PEFT adapter.

Prabhakar et al. 2024 (*LoRA Soups*, arXiv 2410.13025, §3, Fig. 1): every adapted module m gets a
coefficient c_{m,i} per adapter i and computes W x + Σ_i c_{m,i} s_i B_i A_i x. The base model and
the skill LoRAs stay frozen; only the coefficients are trained, on a small mix of the *skill*
datasets (default 5 % of each), never on target-task data. The trained result is exactly a LoRA of
rank Σ r_i (A' = [A_1; ...; A_n], B' = [c_1 s_1 B_1 | ...], scaling 1).

The fused forward and the coefficient bookkeeping are in :mod:`lorasoups.train.fused`, the training
loop in the kit :mod:`lorasoups.train.loop`; this module has the coefficient trainer, the export and
:func:`train_cat` (the ``lorasoups cat`` command). Options: :class:`lorasoups.train.options.CatOptions`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from ..errors import ConfigError, DataError
from ..methods import register_method
from .options import CatOptions

SMALL_MIX = 32  # fewer training examples than this in the CAT mix: warn (noisy coefficients)


def coefficient_stats(handle) -> dict[str, dict[str, float]]:
    """Per adapter: mean / min / max of the normalised coefficients over the groups where it is
    present (with ``missing="exclude"``: over the modules where it is present, as each module uses
    them), and the mean |c - c_initial|."""
    import torch

    from .fused import normalize_coefficients

    co = handle.coefficients
    if getattr(handle, "missing", "share") == "exclude":
        table = handle.coefficient_table()
        out = {}
        for name in handle.adapter_names:
            vals = [row[name] for row in table.values() if name in row]
            if vals:
                fin = torch.tensor([v["final"] for v in vals])
                ini = torch.tensor([v["initial"] for v in vals])
                out[name] = {"mean": round(float(fin.mean()), 6), "min": round(float(fin.min()), 6),
                             "max": round(float(fin.max()), 6),
                             "mean_abs_change": round(float((fin - ini).abs().mean()), 6)}
        return out
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


def fit_coefficients(model, handle, train: list[dict], *, pad_token_id: int, learning_rate: float, max_steps: int,
                     batch_size: int = 8, grad_accum: int = 1, lr_scheduler: str = "linear", warmup_steps: int = 0,
                     seed: int = 0, precision: str = "fp32", device: str = "cpu", log_every: int = 1,
                     group_by_length: bool = False, callback: Callable[[dict], None] | None = None,
                     dist: Any = None, gradient_checkpointing: bool = False) -> list[dict]:
    """Train the CAT coefficient logits with Adam on the causal-LM loss of ``train`` (:func:`lorasoups.train.loop.fit`).

    Only ``handle.coefficients.logits`` (G, n) is optimised; everything else is frozen.

    Args:
        train: tokenised examples ``{"input_ids": [...], "labels": [...]}``.
        max_steps: optimiser steps, each over ``grad_accum`` micro-batches of ``batch_size`` examples.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; factors and logits stay fp32).
        callback: called with every log record.

    Returns:
        log records ``{"step", "loss", "lr", "seconds", "coefficients": {adapter: stats}}`` (step 0 is
        the initial state, no loss); loss is the mean of the step's micro-batch losses (nats/token).
    """
    import torch

    from .loop import fit

    if not train:
        raise DataError("CAT: no training examples")
    params = [handle.coefficients.logits]
    opt = torch.optim.Adam(params, lr=learning_rate)
    log = [{"step": 0, "loss": None, "lr": learning_rate if not warmup_steps else 0.0, "seconds": 0.0,
            "coefficients": coefficient_stats(handle)}]
    if callback:
        callback(log[-1])

    def on_log(rec: dict) -> None:
        rec["coefficients"] = coefficient_stats(handle)
        if callback:
            callback(rec)

    log += fit(model, params, train, optimizer=opt, pad_token_id=pad_token_id, max_steps=max_steps,
               lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, batch_size=batch_size, grad_accum=grad_accum,
               seed=seed, precision=precision, device=device, group_by_length=group_by_length,
               log_every=log_every, on_log=on_log, what="CAT", dist=dist,
               gradient_checkpointing=gradient_checkpointing)
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


class CatExamples(NamedTuple):
    """The examples CAT trains its coefficients on (:func:`cat_examples`)."""

    train: list[dict]  # tokenised examples {"input_ids", "labels"} of the training part
    val: list[dict]  # the held-out part (validation loss before / after)
    stats: dict | None  # per-source counts and length cuts (None for tokenised input)
    data: Any  # the loaded :class:`~lorasoups.train.data.TrainingData` (None for tokenised input)


def cat_examples(data: Sequence[Any], tok: Any, o: CatOptions, *, data_dir: str | None = None,
                 what: str = "CAT") -> CatExamples:
    """Draw CAT's skill mix and split it: the one place that decides which examples CAT (and the
    controls that copy its data, :mod:`lorasoups.train.controls`) train on.

    ``data`` are data specs mixed by :func:`~lorasoups.train.data.load_training_data` with
    ``o.cutoff_len``, ``o.max_samples``, ``o.fraction``, ``o.seed``, ``o.skip_long_prompts`` and
    ``o.long_responses``, or already tokenised examples; the mix is split (seeded by ``o.seed``) into
    a training part and a held-out ``o.val_fraction`` (:func:`~lorasoups.train.loop.split_examples`).

    Raises:
        DataError: the data cannot be loaded or gives no examples.
    """
    from .loop import load_mix, split_examples
    from .mix import tag_skills

    examples, data_stats, td = load_mix(data, tok, o, seed=o.seed, data_dir=data_dir, what=what,
                                        skip_long_prompts=o.skip_long_prompts)
    # each example carries its skill index ("skill") for the mix objective (:mod:`lorasoups.train.mix`)
    examples = tag_skills(examples, td.origin if td is not None else None)
    train_ex, val_ex = split_examples(examples, o.val_fraction, o.seed)
    return CatExamples(train_ex, val_ex, data_stats, td)


def _load_records(adapters: Sequence[Any], allow_pickle: bool):
    from ..io.adapters import read_adapter
    from ..types import AdapterRecord

    return [a if isinstance(a, AdapterRecord) else read_adapter(a, allow_pickle=allow_pickle) for a in adapters]


# ----------------------------------------------------------------------------- entry point

@register_method("cat", kind="learned", space="concat", reference="Prabhakar et al. 2024 (LoRA Soups), §3",
                 description="learnable concatenation: per-module coefficients on frozen skill LoRAs, trained on "
                             "a small skill-data mix, exported as one rank-Σr LoRA",
                 options=CatOptions, stage="cat", order=1,
                 title=lambda p: "export untrained CAT control" if p.get("no_train") else "train CAT coefficients")
def train_cat(base: str, adapters: Sequence[Any], data: Sequence[Any] | None, out: str | os.PathLike, *,
              seed: int = 0, device: str = "auto", data_dir: str | None = None, overwrite: bool = False,
              allow_pickle: bool = False, verbose: bool = False, **params: Any) -> Path:
    """Train CAT coefficients for n ≥ 2 skill LoRAs on a skill-data mix and export one PEFT adapter.

    Args:
        base: base model (embedded name, HF folder or hub id; see :func:`lorasoups.models.load_base`).
        adapters: n ≥ 2 PEFT adapter folders (or :class:`AdapterRecord` objects).
        data: skill data specs (``gsm8k``, ``codealpaca:fraction=0.1``, a file; see
            :func:`lorasoups.train.data.parse_data_spec`) mixed by
            :func:`~lorasoups.train.data.load_training_data`, or already tokenised examples
            ``{"input_ids", "labels"}``. May be empty/None only with ``no_train``.
        out: output folder (written atomically; refused if it is or contains an input).
        seed: seeds data sampling, batch order and a random init.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (under ``accelerate launch``: each process's device).
        **params: :class:`~lorasoups.train.options.CatOptions` (granularity, normalize, init, mix
            (:mod:`lorasoups.train.mix`), missing (:mod:`lorasoups.train.fused`), learning_rate,
            max_steps, epochs, batch_size, grad_accum, lr_scheduler, fraction, ...),
            validated once here. ``group_by_length`` changes which examples share a batch, not the
            data or the loss.

    Returns:
        ``out``: a PEFT LoRA folder (coefficients folded into B, scaling 1) with
        ``cat_coefficients.json``, ``cat_log.jsonl``, ``coefficients.png`` and ``cat_options.json``
        (with ``mix``: per skill its training / held-out examples, scored tokens and weight share,
        and ``val_loss_by_skill``).

    Raises:
        ConfigError: bad option values (all named), fewer than 2 adapters, no data without ``no_train``.
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
    from .loop import Dist, eval_loss, examples_digest, resolve_precision, steps_for
    from .mix import apply_mix, loss_by_skill, objective_shares

    o = CatOptions.parse({**params, "seed": seed}, where="cat")
    t_start = time.time()
    adapters = list(adapters)
    data = list(data or [])
    if len(adapters) < 2:
        raise ConfigError(f"CAT needs at least 2 adapters, got {len(adapters)}")
    if not data and not o.no_train:
        raise ConfigError("CAT trains on skill data: give --data SPEC (e.g. the skill datasets), or --no-train")
    parse_init(o.init, len(adapters))  # the number of values must match the adapters
    paths_in = [a for a in adapters if isinstance(a, (str, os.PathLike))]
    check_not_input(out, paths_in)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")

    dist = Dist(device)
    dev = dist.device
    prec, prec_reason = resolve_precision(o.precision, dev)
    records = _load_records(adapters, allow_pickle)
    torch.manual_seed(seed)
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    handle = attach_cat(model, records, granularity=o.granularity, normalize=o.normalize, init=o.init, seed=seed,
                        missing=o.missing)

    # Data: the skill mix, split into train and a held-out validation part.
    train_ex: list[dict] = []
    val_ex: list[dict] = []
    data_stats = None
    skill_names = None  # the skill (data spec) names, for the mix
    if data and not o.no_train:
        ce = cat_examples(data, tok, o, data_dir=data_dir)
        train_ex, val_ex, data_stats = ce.train, ce.val, ce.stats
        if ce.data is not None:
            skill_names = [x.name for x in ce.data.sources]
    train_ex, mix_doc = apply_mix(train_ex, val_ex, o.mix, skill_names) if train_ex else (train_ex, None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    say = (lambda s: print(s, flush=True)) if verbose and dist.is_main else (lambda s: None)
    if not o.no_train and (len(train_ex) < SMALL_MIX or 0 < len(val_ex) < SMALL_MIX // 4):
        print(f"cat: warning: the training mix is small ({len(train_ex)} training, {len(val_ex)} held-out "
              f"examples); coefficients and the validation loss will be noisy (raise --fraction or "
              f"--max-samples, or give more data)", flush=True)
    n_steps = 0 if o.no_train else steps_for(len(train_ex), batch_size=o.batch_size, grad_accum=o.grad_accum,
                                             epochs=o.epochs, max_steps=o.max_steps, world=dist.world)
    if mix_doc:  # the share each skill has in this run's steps, as they are batched
        mix_doc["objective_share"] = objective_shares(
            train_ex, skill_names, batch_size=o.batch_size, world=dist.world, grad_accum=o.grad_accum, steps=n_steps,
            seed=seed, group_by_length=o.group_by_length)
    val_before = val_after = None
    vkw = dict(pad_token_id=pad, batch_size=o.batch_size, precision=prec, device=dev, dist=dist)
    by_skill: dict[str, dict[str, float]] = {}
    if val_ex:
        val_before = eval_loss(model, val_ex, **vkw)
        say(f"cat: validation loss before {val_before:.4f} ({len(val_ex)} held-out examples)")
        for k, v in loss_by_skill(eval_loss, model, val_ex, skill_names, **vkw).items():
            by_skill[k] = {"before": v}
    t_train = time.time()
    if not o.no_train:
        def cb(rec: dict) -> None:
            if rec["step"]:
                co = " ".join(f"{k}={v['mean']:.3f}" for k, v in rec["coefficients"].items())
                say(f"cat: step {rec['step']}/{n_steps} loss {rec['loss']:.4f} lr {rec['lr']:.3g} mean c: {co}")

        log = fit_coefficients(model, handle, train_ex, pad_token_id=pad, learning_rate=o.learning_rate,
                               max_steps=n_steps, batch_size=o.batch_size, grad_accum=o.grad_accum,
                               lr_scheduler=o.lr_scheduler, warmup_steps=o.warmup_steps, seed=seed,
                               group_by_length=o.group_by_length, precision=prec, device=dev,
                               log_every=o.log_every, callback=cb, dist=dist,
                               gradient_checkpointing=o.gradient_checkpointing)
    else:
        log = [{"step": 0, "loss": None, "lr": None, "seconds": 0.0, "coefficients": coefficient_stats(handle)}]
    train_s = time.time() - t_train
    if val_ex and not o.no_train:
        val_after = eval_loss(model, val_ex, **vkw)
        say(f"cat: validation loss after {val_after:.4f}")
        for k, v in loss_by_skill(eval_loss, model, val_ex, skill_names, **vkw).items():
            by_skill.setdefault(k, {})["after"] = v


    table = handle.coefficient_table()
    factors = handle.export_factors()
    names = handle.adapter_names
    coef_doc = {
        "method": "cat",
        "granularity": o.granularity,
        "normalize": o.normalize,
        "missing": o.missing,
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
        "options": {**o.model_dump(), "epochs": o.epochs if o.max_steps is None else None, "device": device},
        "resolved": {"precision": prec, "precision_reason": prec_reason, "device": dev, "steps": n_steps,
                     "world_size": dist.world, "train_examples": len(train_ex),
                     "train_examples_sha256": examples_digest(train_ex) if train_ex else None,
                     "val_examples": len(val_ex), "groups": len(handle.coefficients.groups),
                     "modules": len(handle.modules), "total_ranks": sorted({f.r for f in factors.values()})},
        "data_stats": data_stats,
        "mix": mix_doc,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "val_loss_by_skill": by_skill or None,
        "train_seconds": round(train_s, 2),
        "seconds_per_step": round(train_s / n_steps, 3) if n_steps else None,
        "total_seconds": None,
        "provenance": provenance(),
    }
    check_not_input(out, paths_in)
    if not dist.is_main:  # every process holds the same coefficients; the main one writes them
        dist.wait()
        return out
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_adapter_files(tmp, factors, base_model=resolve_base(base))
        (tmp / "cat_coefficients.json").write_text(json.dumps(coef_doc, indent=2) + "\n", encoding="utf-8")
        (tmp / "cat_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
        extra = (", balanced mix" if o.mix == "balanced" and not o.no_train else "") + \
            (", absent adapters excluded" if o.missing == "exclude" else "")
        title = f"CAT ({o.granularity}, {o.normalize}, init {o.init}{extra}{', no-train' if o.no_train else f', {n_steps} steps, lr {o.learning_rate:g}'})"
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
    dist.wait()
    return out
