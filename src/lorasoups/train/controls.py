"""The two controls that tell skill transfer from regularisation in a CAT result.

Liu et al. 2026 (*The Appeal and Reality of Recycling LoRAs with Adaptive Merging*, arXiv
2602.12323) found that adaptive merges of about 1,000 hub LoRAs barely beat a new LoRA trained on
the data used to fit the merge coefficients, and that LoRAs with random parameters did about as
well. So every experiment here can hold, beside ``cat``:

- ``cat_random``: CAT with the same options and data over *random-like* LoRAs of the skill LoRAs
  (same modules, ranks, scales and per-module norms, Gaussian directions;
  :mod:`lorasoups.train.random_like`). If CAT wins only as much over these, its gain is not the skills.
- ``lora_cat_data``: one fresh LoRA, with the skill LoRAs' shape and optimiser (the experiment's
  ``train`` block), trained with the SFT trainer (:func:`lorasoups.train.sft.train_lora`) on exactly
  the examples CAT draws for its coefficients (:func:`lorasoups.train.cat.cat_examples`: the same
  specs, fraction / max_samples, seed, cutoff and skip rules, the same training part of the split)
  for exactly CAT's number of optimiser steps and batch size. If it matches CAT, the coefficient data
  alone explains the gain.

A CAT win counts only if it beats both. How a control reads its CAT row (``params.cat``, default
``cat``): config validation calls the registration's ``link`` (:attr:`lorasoups.methods.MethodInfo.link`),
:func:`link_cat_random_row` / :func:`link_cat_row`, which copy the named CAT row's options (into the
params, or into ``cat_options``), skills and data into the control's row, so the two cannot drift: a
preset that changes CAT changes the controls, and their cache keys follow.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from ..methods import register_method
from .options import CatDataLoraOptions, CatOptions, CatRandomOptions, TrainOptions

LIU_2026 = ("Liu et al. 2026, The Appeal and Reality of Recycling LoRAs with Adaptive Merging, arXiv 2602.12323")

#: Training options of the fresh-LoRA control that come from its CAT row (data and steps), never from
#: the experiment's ``train`` block or the control's own params.
FROM_CAT = ("batch_size", "grad_accum", "max_steps", "epochs", "cutoff_len", "fraction", "max_samples",
            "val_fraction", "seed", "skip_long_prompts", "long_responses", "group_by_length", "train_on_inputs",
            "text_overlap", "weights")


# ----------------------------------------------------------------------------- linking a control to its CAT row

def _cat_row(body: Mapping[str, Any], rows: Mapping[str, Any], path: str, *, default: str | None,
             must_train: bool) -> tuple[Any, str | None, list[str]]:
    """(the CAT row a control names in ``params.cat``, its label, problems); the row is None when
    it names none (or a bad one)."""
    from ..registry import suggest

    own = body.get("params") if isinstance(body.get("params"), Mapping) else {}
    label = own.get("cat", default)
    if not isinstance(label, str):
        return None, None, []  # none: not linked; another type: the spec reports it
    trained = [lb for lb, r in rows.items() if r.method == "cat" and not (must_train and r.params.get("no_train"))]
    cat = rows.get(label)
    if cat is None or cat.method != "cat":
        return None, label, [f"{path}.params.cat: {label!r} is not a CAT row of this config{suggest(label, trained)}; "
                             f"rows of method cat{' that train' if must_train else ''}: {', '.join(trained) or 'none'}"]
    if must_train and cat.params.get("no_train"):
        return None, label, [f"{path}.params.cat: the CAT row {label!r} does not train (no_train: true); "
                             f"name one that does ({', '.join(trained) or 'none'})"]
    return cat, label, []


def _same_inputs(row: Any, cat: Any, body: Mapping[str, Any], label: str, path: str) -> list[str]:
    """Problems of a control row that gives other skills or data than its CAT row."""
    out = []
    if "skills" in body and tuple(row.skills) != tuple(cat.skills):
        out.append(f"{path}.skills: {list(row.skills)} differ from the CAT row {label!r}'s {list(cat.skills)} "
                   f"(leave skills out: the control uses CAT's)")
    if "data" in body and tuple(row.data) != tuple(cat.data):
        out.append(f"{path}.data: differs from the CAT row {label!r}'s data (leave data out: the control uses CAT's)")
    return out


def link_cat_row(row: Any, *, body: Mapping[str, Any], rows: Mapping[str, Any], seed: int,
                 path: str) -> tuple[Any, list[str]]:
    """Fill a ``lora_cat_data`` row from the CAT row it names (``params.cat``, default ``cat``).

    The row gets that CAT row's skills and data, its params lose the :data:`FROM_CAT` keys (the
    experiment's ``train`` values for them do not apply) and gain ``cat_options`` (the CAT row's
    params, with the experiment ``seed`` when it sets none) and ``seed`` (CAT's).

    Args:
        row: the control's :class:`~lorasoups.config.MethodConfig` (params already over ``train``).
        body: the row as written in the config (to tell its own params from ``train``'s).
        rows: every row by label.
        seed: the experiment seed.
        path: ``methods.<label>`` for the problems.

    Returns:
        (the filled row, problems): a :data:`FROM_CAT` key or ``cat_options`` set in the row itself,
        no such CAT row, a CAT row that does not train, or other skills or data than CAT's.
    """
    from ..config_load import freeze, thaw

    own = body.get("params") if isinstance(body.get("params"), Mapping) else {}
    cat, label, probs = _cat_row(body, rows, path, default="cat", must_train=True)
    probs = [f"{path}.params.{k}: comes from the CAT row {label!r} (this control copies its data and steps); "
             f"set it there" for k in FROM_CAT if k in own] + probs
    if "cat_options" in own:
        probs.append(f"{path}.params.cat_options: filled in from the CAT row {label!r}; not set in a config")
    if cat is None:
        return row, probs
    probs += _same_inputs(row, cat, body, label, path)
    cat_opts = thaw(cat.params)
    cat_opts.setdefault("seed", seed)
    params = {k: v for k, v in thaw(row.params).items() if k not in FROM_CAT}
    params.update(cat=label, cat_options=cat_opts, seed=cat_opts["seed"])
    return replace(row, skills=tuple(cat.skills), data=tuple(cat.data), params=freeze(params)), probs


def link_cat_random_row(row: Any, *, body: Mapping[str, Any], rows: Mapping[str, Any], seed: int,
                        path: str) -> tuple[Any, list[str]]:
    """Fill a ``cat_random`` row from the CAT row it names (``params.cat``, default ``cat``; ``null``:
    not linked, its own options): that row's CAT options (and seed: the experiment's when it sets
    none), skills and data, so the control runs CAT exactly as the CAT row does in every preset.
    Arguments and returns as :func:`link_cat_row`; a CAT option set in the control's own row is a problem."""
    from ..config_load import freeze, thaw

    own = body.get("params") if isinstance(body.get("params"), Mapping) else {}
    cat, label, probs = _cat_row(body, rows, path, default="cat", must_train=False)
    if label is None:
        return row, probs
    probs = [f"{path}.params.{k}: comes from the CAT row {label!r} (this control runs CAT as that row does); set it "
             f"there, or give cat: null to set CAT's options here" for k in own if k in CatOptions.model_fields] + probs
    if cat is None:
        return row, probs
    probs += _same_inputs(row, cat, body, label, path)
    params = {**thaw(cat.params), **{k: v for k, v in thaw(row.params).items() if k not in CatOptions.model_fields}}
    params.setdefault("seed", seed)
    params["cat"] = label
    return replace(row, skills=tuple(cat.skills), data=tuple(cat.data), params=freeze(params)), probs


# ----------------------------------------------------------------------------- CAT over random-like LoRAs

def _cat_random_title(p: Mapping[str, Any]) -> str:
    return "export untrained CAT over random-like LoRAs" if p.get("no_train") else "train CAT over random-like LoRAs"


@register_method("cat_random", kind="learned", space="concat", options=CatRandomOptions, stage="cat_random", order=2,
                 title=_cat_random_title, link=link_cat_random_row,
                 reference=f"{LIU_2026}; CAT: Prabhakar et al. 2024 (LoRA Soups), §3",
                 description="control: CAT with the same options and data over random-like LoRAs (same shapes, "
                             "scales and per-module norms as the skill LoRAs, Gaussian directions)")
def cat_random(base: str, adapters: Sequence[Any], data: Sequence[Any] | None, out: str | os.PathLike, *,
               seed: int = 0, device: str = "auto", data_dir: str | None = None, overwrite: bool = False,
               allow_pickle: bool = False, verbose: bool = False, **params: Any) -> Path:
    """Train CAT (:func:`lorasoups.train.cat.train_cat`) over random-like copies of ``adapters``.

    Each adapter i is replaced by :func:`~lorasoups.train.random_like.random_like` with seed
    ``adapter_seed(random_seed, i)`` (``random_seed`` defaults to ``seed``) and norm ``random_norm``;
    CAT then runs with the remaining options, the same ``seed`` and the same ``data``.

    Args:
        adapters: n ≥ 2 PEFT adapter folders (or :class:`~lorasoups.types.AdapterRecord` objects).
        **params: :class:`~lorasoups.train.options.CatRandomOptions` (CAT's options plus
            ``random_norm``, ``random_seed``).

    Returns:
        ``out``: CAT's output (a PEFT LoRA of rank Σ r_i, coefficients folded into B, with
        ``cat_coefficients.json``, ``cat_log.jsonl``, ``cat_options.json``, ``coefficients.png``) plus
        ``random_like.json``: the seeds, the norm mode and, per adapter, the norms of the original and
        the random-like factors and the mean / largest |cos| between their per-module ΔW.

    Raises:
        ConfigError: bad options, fewer than 2 adapters, several processes; and what
            :func:`~lorasoups.train.cat.train_cat` raises.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    from ..io.adapters import read_adapter
    from ..paths import atomic_dir, check_not_input
    from ..provenance import provenance, sha256_dir
    from ..types import AdapterRecord
    from .cat import train_cat
    from .random_like import adapter_seed, compare, random_like_adapters

    o = CatRandomOptions.parse({**params, "seed": seed}, where="cat_random")
    adapters = list(adapters)
    if len(adapters) < 2:
        raise ConfigError(f"cat_random needs at least 2 adapters, got {len(adapters)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("cat_random runs in one process (not under accelerate launch or torchrun)")
    paths_in = [a for a in adapters if isinstance(a, (str, os.PathLike))]
    check_not_input(out, paths_in)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    records = [a if isinstance(a, AdapterRecord) else read_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    rseed = seed if o.random_seed is None else o.random_seed
    randoms = random_like_adapters(records, seed=rseed, norm=o.random_norm)
    doc = {"method": "cat_random", "reference": LIU_2026, "random_seed": rseed, "norm": o.random_norm,
           "norm_units": "Frobenius norms summed over modules: sqrt(Σ_m ||X_m||²), [original, random-like]",
           "adapters": [{"name": r.name, "source": str(r.source) if r.source else None,
                         "sha256": sha256_dir(r.source) if r.source else None,
                         "seed": adapter_seed(rseed, i), "random_like": rr.name, **compare(r, rr)}
                        for i, (r, rr) in enumerate(zip(records, randoms))],
           "provenance": provenance()}
    doc["cat_row"] = o.cat  # the CAT row it copies in an experiment (None: its own options)
    cat_params = {k: v for k, v in o.model_dump().items() if k in CatOptions.model_fields and k != "seed"}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        inner = tmp / "cat"
        train_cat(base, randoms, data, inner, seed=seed, device=device, data_dir=data_dir, verbose=verbose,
                  **cat_params)
        for f in list(inner.iterdir()):
            os.replace(f, tmp / f.name)
        inner.rmdir()
        (tmp / "random_like.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- a fresh LoRA on CAT's data

def _val_callback(val: list[dict], info: dict[str, Any], *, pad_token_id: int, batch_size: int, precision: str):
    """A TrainerCallback writing ``val_loss_before`` (the base model: a fresh LoRA's B is 0) and
    ``val_loss_after`` into ``info``: the kit's token-weighted loss (:func:`lorasoups.train.loop.eval_loss`)
    on ``val``, as CAT measures its ``val_loss_before`` / ``val_loss_after``."""
    from transformers import TrainerCallback

    from .loop import eval_loss, resolve_precision

    def loss(model) -> float:
        dev = next(model.parameters()).device
        prec, _ = resolve_precision(precision, dev.type)
        return round(eval_loss(model, val, pad_token_id=pad_token_id, batch_size=batch_size, precision=prec,
                               device=str(dev)), 6)

    class ValLoss(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            if val and model is not None and state.is_world_process_zero and state.global_step == 0:
                info["val_loss_before"] = loss(model)

        def on_train_end(self, args, state, control, model=None, **kw):
            if val and model is not None and state.is_world_process_zero:
                info["val_loss_after"] = loss(model)

    return ValLoss()


@register_method("lora_cat_data", kind="trained", space="model", options=CatDataLoraOptions, stage="lora_cat_data",
                 order=8, title="train a fresh LoRA on CAT's examples", uses_adapters=False, resumable=True,
                 link=link_cat_row, reference=f"{LIU_2026}: a new LoRA trained on the coefficient data",
                 description="control: one fresh LoRA (the skill LoRAs' shape and optimiser) trained on exactly "
                             "CAT's examples for exactly CAT's steps and batch size")
def lora_cat_data(base: str, adapters: Sequence[Any], data: Sequence[Any] | None, out: str | os.PathLike, *,
                  seed: int = 0, device: str = "auto", data_dir: str | None = None, overwrite: bool = False,
                  resume: bool = False, progress: bool = True, **params: Any) -> Path:
    """Train one fresh LoRA on exactly the examples and steps CAT uses (``adapters`` is ignored).

    The examples are CAT's (:func:`lorasoups.train.cat.cat_examples` with ``cat_options``): its
    training part is the training set, its held-out part gives ``val_loss_before`` / ``val_loss_after``
    (token-weighted, as CAT's). Steps: :func:`lorasoups.train.loop.steps_for` with CAT's batch size,
    gradient accumulation, ``max_steps`` / ``epochs`` and the process count, exactly as CAT counts
    them; the SFT trainer then runs that many optimiser steps of CAT's batch size.

    Args:
        data: CAT's data specs (the runner gives the CAT row's; tokenised examples are refused).
        **params: :class:`~lorasoups.train.options.CatDataLoraOptions`: the LoRA's shape and optimiser
            (r, lora_alpha, target_modules, learning_rate, warmup_steps, ...), ``cat_options`` (CAT's
            options; without them CAT's defaults with ``seed``). The :data:`FROM_CAT` options given
            here are not used.

    Returns:
        ``out``: a PEFT LoRA folder from :func:`~lorasoups.train.sft.train_lora` whose
        ``train_info.json`` has ``"method": "lora_cat_data"`` and a ``"control"`` record (CAT's
        options, steps, example counts, ``train_examples_sha256`` equal to CAT's own record,
        validation losses).

    Raises:
        ConfigError: bad options, CAT options with ``no_train``, no data specs.
        DataError: the data cannot be loaded or gives no examples.
        FileExistsError: ``out`` exists and not ``overwrite``.
    """
    from ..models import load_tokenizer
    from .cat import cat_examples
    from .loop import examples_digest, is_examples, steps_for
    from .sft import train_lora

    o = CatDataLoraOptions.parse({**params, "seed": seed}, where="lora_cat_data")
    cat = CatOptions.parse({"seed": seed, **(o.cat_options or {})}, where="lora_cat_data.cat_options")
    if cat.no_train:
        raise ConfigError("lora_cat_data: the CAT options have no_train: true (CAT trains on no data to copy)")
    data = list(data or [])
    if not data or is_examples(data):
        raise ConfigError("lora_cat_data trains on CAT's data specs (e.g. the skill datasets); give data specs")
    tok = load_tokenizer(base)
    ex = cat_examples(data, tok, cat, data_dir=data_dir, what="lora_cat_data")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n_steps = steps_for(len(ex.train), batch_size=cat.batch_size, grad_accum=cat.grad_accum, epochs=cat.epochs,
                        max_steps=cat.max_steps, world=world)
    lora = {k: v for k, v in o.model_dump().items() if k in TrainOptions.model_fields and k not in FROM_CAT}
    train_opts = {**lora, "max_steps": n_steps, "epochs": None, "batch_size": cat.batch_size,
                  "grad_accum": cat.grad_accum, "cutoff_len": cat.cutoff_len, "seed": cat.seed,
                  "fraction": cat.fraction, "max_samples": cat.max_samples, "val_fraction": 0.0,
                  "skip_long_prompts": cat.skip_long_prompts, "long_responses": cat.long_responses,
                  "group_by_length": cat.group_by_length, "data_dir": data_dir}
    control: dict[str, Any] = {
        "reference": LIU_2026, "cat_row": o.cat, "cat_options": cat.model_dump(), "steps": n_steps,
        "world_size": world, "train_examples": len(ex.train), "val_examples": len(ex.val),
        "train_examples_sha256": examples_digest(ex.train),
        "val_examples_sha256": examples_digest(ex.val) if ex.val else None,
        "val_loss_before": None, "val_loss_after": None}
    cb = _val_callback(ex.val, control, pad_token_id=tok.pad_token_id, batch_size=cat.batch_size,
                       precision=o.precision)
    return train_lora(base, data, out, prepared=(ex.data, ex.train, []), callbacks=[cb],
                      extra_info={"method": "lora_cat_data", "control": control}, device=device,
                      overwrite=overwrite, resume=resume, progress=progress, **train_opts)
