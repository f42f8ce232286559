"""Training the routers of a mixture of LoRA experts (``lorasoups moe``).

The skill LoRAs are frozen experts; a router per adapted module (in the chosen decoder layers) is
trained on the same skill mix CAT uses (``fraction`` of each skill dataset), with the causal-LM
loss plus an optional load-balancing loss (Fedus et al. 2022, eq. 4), averaged over routed modules:

    loss = CE + balance_loss · mean_m n · Σ_i f_{m,i} P_{m,i}

The paper (Prabhakar et al. 2024, §5) compares CAT with such an MoE built with mergoo; unlike
mergoo, every router here reads its own module's input, so MLP ``down_proj`` experts work too.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from ..methods import register_method

DEFAULT_LR = 1e-3
DEFAULT_TOP_K = 2
DEFAULT_FRACTION = 0.05
DEFAULT_ROUTER_INIT_STD = 0.01
DEFAULT_BALANCE = 0.01


def _is_examples(data: Sequence[Any]) -> bool:
    return bool(data) and all(isinstance(d, dict) and "input_ids" in d for d in data)


def _unique_names(names: Sequence[str]) -> list[str]:
    return [nm if list(names).count(nm) == 1 else f"{nm}#{i}" for i, nm in enumerate(names)]


def fit_routers(model, layers, train: list[dict], *, pad_token_id: int, lr: float, steps: int,
                batch_size: int, grad_accum: int = 1, schedule: str = "linear", balance_loss: float = DEFAULT_BALANCE,
                seed: int = 0, precision: str = "fp32", device: str = "cpu", progress: bool = True,
                group_by_length: bool = False) -> list[dict]:
    """Train only the router weights with AdamW (no weight decay) on ``train``.

    Args:
        layers: module path -> :class:`~lorasoups.moe.layer.MoeLoraLinear` (from ``attach_moe``).
        train: tokenised examples ``{"input_ids", "labels"}``.
        steps: optimiser steps, each over ``grad_accum`` micro-batches of ``batch_size`` examples.
        balance_loss: weight of the load-balancing loss (0 disables it).
        group_by_length: length-bucketed micro-batches (:func:`lorasoups.train.cat.batches`).

    Returns:
        log records ``{"step", "loss", "ce", "balance", "lr", "seconds"}`` (nats per scored token).

    Raises:
        DataError: no examples or a non-finite loss. ConfigError: no routed module.
    """
    import torch
    from tqdm.auto import tqdm

    from ..train.loss import lm_loss_sum
    from ..train.cat import autocast_context, batches, lr_at
    from ..train.data import collate
    from .model import mean_aux_loss, router_parameters, set_token_mask

    params = router_parameters(layers)
    if not params:
        raise ConfigError("no module has a router (check --router-layers); nothing to train")
    if not train:
        raise DataError("MoE: no training examples")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    stream = batches(train, batch_size, seed, group_by_length)
    log: list[dict] = []
    t0 = time.time()
    model.train()
    from ..progress import progress_enabled

    bar = tqdm(total=steps, desc="moe routers", unit="step", disable=not progress_enabled(progress))
    try:
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, schedule)
            opt.zero_grad(set_to_none=True)
            ces, auxes = [], []
            for _ in range(grad_accum):
                b = {k: v.to(device) for k, v in collate(next(stream), pad_token_id).items()}
                set_token_mask(layers, b["attention_mask"], collect_aux=balance_loss > 0)
                with autocast_context(precision, device):
                    s, n = lm_loss_sum(model, b)
                ce = s / max(n, 1)
                aux = mean_aux_loss(layers) if balance_loss > 0 else None
                loss = ce + (balance_loss * aux if aux is not None else 0.0)
                if not torch.isfinite(loss):
                    raise DataError(f"MoE: non-finite loss at step {step + 1}; try a smaller --lr")
                (loss / grad_accum).backward()
                ces.append(float(ce.detach()))
                auxes.append(float(aux.detach()) if aux is not None else None)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ce_m = sum(ces) / len(ces)
            aux_v = [a for a in auxes if a is not None]
            aux_m = sum(aux_v) / len(aux_v) if aux_v else None
            log.append({"step": step + 1, "loss": round(ce_m + (balance_loss * aux_m if aux_m else 0.0), 6),
                        "ce": round(ce_m, 6), "balance": None if aux_m is None else round(aux_m, 6),
                        "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)})
            bar.update(1)
            bar.set_postfix(ce=f"{ce_m:.4f}")
    finally:
        bar.close()
        set_token_mask(layers, None, collect_aux=False)
        for p in params:
            p.requires_grad_(False)
        model.eval()
    return log


def mean_ce_examples(model, examples: list[dict], pad_token_id: int, batch_size: int, precision: str, device: str) -> float:
    """Token-mean cross-entropy (nats) of ``model`` on tokenised examples, no gradients."""
    import torch

    from ..search.lorahub import mean_ce
    from ..train.cat import autocast_context
    from ..train.data import collate

    bs = [{k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_token_id).items()}
          for i in range(0, len(examples), batch_size)]
    with torch.no_grad(), autocast_context(precision, device):
        return mean_ce(model, bs)


@register_method("moe", kind="routed", space="model",
                 reference="mixture of LoRA experts as in mergoo (used by Prabhakar et al. 2024, §5); top-k gating "
                           "Shazeer et al. 2017; load balancing Fedus et al. 2022",
                 description="frozen skill LoRAs as experts, per-token top-k routers on each adapted module's input; "
                             "not a plain LoRA (saved as an MoE folder)")
def train_moe(base: str, adapters: Sequence[str | os.PathLike], data: Sequence[Any], out: str | os.PathLike, *,
              top_k: int = DEFAULT_TOP_K, router_layers: str | Sequence[int] | None = "all",
              lr: float = DEFAULT_LR, steps: int | None = None, epochs: float = 1.0, batch_size: int = 8,
              grad_accum: int = 1, group_by_length: bool = True, schedule: str = "linear",
              balance_loss: float = DEFAULT_BALANCE,
              router_init_std: float = DEFAULT_ROUTER_INIT_STD, fraction: float | None = DEFAULT_FRACTION,
              max_samples: int | None = None, cutoff_len: int = 512, val_fraction: float = 0.1, seed: int = 0,
              long_responses: str = "skip", precision: str = "auto", device: str = "auto", data_dir: str | None = None,
              overwrite: bool = False, allow_pickle: bool = False, progress: bool = True) -> Path:
    """Train per-token routers over frozen LoRA experts and save an MoE folder.

    Args:
        base: base model (embedded name, HF folder or hub id).
        adapters: n ≥ 2 PEFT LoRA folders (the experts, in router order).
        data: skill data specs (as for CAT; ``fraction`` of each is used) or tokenised examples.
        out: output MoE folder (``moe_config.json``, ``routers.safetensors``, ``train_log.jsonl``);
            see :mod:`lorasoups.moe.folder`.
        top_k: experts per token (softmax over the top-k router logits); clipped to n.
        router_layers: decoder layers whose modules get routers (``all``, ``none``, ``"0,2,10-15"``);
            modules in other layers mix the experts uniformly (1/n), with nothing to train.
        lr, steps, epochs, batch_size, grad_accum, schedule: AdamW on the routers; ``steps`` None ->
            ``epochs`` passes over the training part of the mix.
        group_by_length: length-bucketed micro-batches (:func:`lorasoups.train.cat.batches`): same
            examples per epoch, little padding; changes which examples share a batch, not the data.
        balance_loss: weight of the load-balancing loss (0 disables).
        router_init_std: std of the seeded normal init of router weights (0 -> zeros, uniform gates).
        fraction, max_samples: part of each skill dataset used (default 5 %, as CAT).
        val_fraction: part of the mix held out; its loss before/after training is recorded.
        long_responses: ``skip`` (default) records whose response does not fit ``cutoff_len``, or
            ``keep`` them cut; counted in the folder's training record (``data_stats``) and printed.
        precision: ``auto``, ``fp32`` or ``bf16`` (autocast; experts and routers stay fp32).

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: bad options. AdapterError: unreadable experts or experts that do not fit the
        base model. DataError: no examples. FileExistsError: ``out`` exists without ``overwrite``.
    """
    import torch

    from ..io.adapters import read_adapter
    from ..models import load_base
    from ..paths import check_not_input
    from ..train.cat import check_fit_options, resolve_device, resolve_precision, split_examples
    from ..io.card import data_checksums
    from .folder import save_moe_folder
    from .model import attach_moe, init_routers, parse_router_layers, routed_modules, router_parameters

    t_start = time.time()
    adapters = list(adapters)
    data = list(data or [])
    if len(adapters) < 2:
        raise ConfigError(f"a mixture of experts needs at least 2 expert adapters, got {len(adapters)}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be ≥ 1, got {top_k}")
    if balance_loss < 0 or router_init_std < 0:
        raise ConfigError("--balance-loss and --router-init-std must be ≥ 0")
    check_fit_options(lr=lr, steps=steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                      schedule=schedule, fraction=fraction, val_fraction=val_fraction)
    if not data:
        raise ConfigError("the routers train on skill data: give --data SPEC (e.g. the skill datasets)")
    out = Path(out)
    check_not_input(out, adapters)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    records = [read_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    names = _unique_names([r.name for r in records])
    for r, nm in zip(records, names):
        r.name = nm
    torch.manual_seed(seed)
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    n_layers = getattr(model.config, "num_hidden_layers", None)
    layer_list = parse_router_layers(router_layers, n_layers)
    modules = sorted({m for r in records for m in r.modules})
    routed = routed_modules(modules, layer_list)
    if not routed:
        raise ConfigError(f"--router-layers {router_layers!r} selects no adapted module; nothing to train")
    layers = attach_moe(model, records, top_k=top_k, routed=routed)
    init_routers(layers, router_init_std, seed)

    examples = data if _is_examples(data) else None
    data_stats = None
    if examples is None:
        from ..train.data import load_training_data

        td = load_training_data(data, tok, cutoff_len=cutoff_len, max_samples=max_samples, fraction=fraction,
                                seed=seed, data_dir=data_dir, long_responses=long_responses)
        examples = td.examples
        data_stats = {"sources": [x.as_dict() for x in td.sources], **td.cut_summary()}
        for line in td.cut_report():
            print(f"moe: data: {line}", flush=True)
    if not examples:
        raise DataError(f"MoE: the data {data[:5]} gave no training examples")
    train_ex, val_ex = split_examples(list(examples), val_fraction, seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    n_steps = int(steps) if steps is not None else max(1, math.ceil(epochs * math.ceil(len(train_ex) / (batch_size * grad_accum))))

    val_before = mean_ce_examples(model, val_ex, pad, batch_size, prec, dev) if val_ex else None
    t_train = time.time()
    log = fit_routers(model, layers, train_ex, pad_token_id=pad, lr=lr, steps=n_steps, batch_size=batch_size,
                      grad_accum=grad_accum, schedule=schedule, balance_loss=balance_loss, seed=seed,
                      precision=prec, device=dev, progress=progress, group_by_length=bool(group_by_length))
    train_s = time.time() - t_train
    val_after = mean_ce_examples(model, val_ex, pad, batch_size, prec, dev) if val_ex else None

    check_not_input(out, adapters)
    training = {
        "options": {"top_k": top_k, "router_layers": router_layers if isinstance(router_layers, (str, type(None))) else list(router_layers),
                    "lr": lr, "steps": steps, "epochs": epochs if steps is None else None,
                    "batch_size": batch_size, "grad_accum": grad_accum,
                    "group_by_length": bool(group_by_length), "schedule": schedule, "balance_loss": balance_loss, "router_init_std": router_init_std, "fraction": fraction,
                    "max_samples": max_samples, "cutoff_len": cutoff_len, "val_fraction": val_fraction,
                    "long_responses": long_responses, "seed": seed, "precision": precision, "device": device},
        "data": [d if isinstance(d, str) else "<tokenised examples>" if isinstance(d, dict) else str(d)
                 for d in data][:50],
        "resolved": {"precision": prec, "device": dev, "steps": n_steps, "train_examples": len(train_ex),
                     "val_examples": len(val_ex),
                     "router_parameters": sum(p.numel() for p in router_parameters(layers))},
        "data_stats": data_stats,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "first_loss": log[0]["ce"] if log else None,
        "last_loss": log[-1]["ce"] if log else None,
        "train_seconds": round(train_s, 2),
        "seconds_per_step": round(train_s / n_steps, 3) if n_steps else None,
        "total_seconds": round(time.time() - t_start, 2),
        "data_checksums": data_checksums([d for d in data if isinstance(d, str)], data_dir),
    }
    save_moe_folder(out, layers, adapters, names, base_model=base, top_k=top_k,
                    router_layers="all" if layer_list is None else layer_list, training=training, log=log,
                    overwrite=overwrite)
    return out
