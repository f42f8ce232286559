"""Training the routers of a mixture of LoRA experts (``lorasoups moe``).

The skill LoRAs are frozen experts; a router per adapted module (in the chosen decoder layers) is
trained on the same skill mix CAT uses (``fraction`` of each skill dataset), with the causal-LM
loss plus an optional load-balancing loss (Fedus et al. 2022, eq. 4), averaged over routed modules:

    loss = CE + balance_loss · mean_m n · Σ_i f_{m,i} P_{m,i}

The paper (Prabhakar et al. 2024, §5) compares CAT with such an MoE built with mergoo; unlike
mergoo, every router here reads its own module's input, so MLP ``down_proj`` experts work too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, DataError
from ..methods import register_method
from ..train.options import MoeOptions

def fit_routers(model, layers, train: list[dict], *, pad_token_id: int, learning_rate: float, max_steps: int,
                batch_size: int, grad_accum: int = 1, lr_scheduler: str = "linear", warmup_steps: int = 0,
                balance_loss: float = 0.01, seed: int = 0, precision: str = "fp32", device: str = "cpu",
                progress: bool = True, group_by_length: bool = False, dist: Any = None,
                gradient_checkpointing: bool = False) -> list[dict]:
    """Train only the router weights with AdamW (no weight decay, gradient norm clipped to 1) on
    ``train`` with the training kit (:func:`lorasoups.train.loop.fit`).

    Args:
        layers: module path -> :class:`~lorasoups.moe.layer.MoeLoraLinear` (from ``attach_moe``).
        train: tokenised examples ``{"input_ids", "labels"}``.
        max_steps: optimiser steps, each over ``grad_accum`` micro-batches of ``batch_size`` examples.
        balance_loss: weight of the load-balancing loss (0 disables it).

    Returns:
        log records ``{"step", "loss", "ce", "balance", "lr", "seconds"}`` (nats per scored token).

    Raises:
        DataError: no examples or a non-finite loss. ConfigError: no routed module.
    """
    import torch

    from ..train.loop import fit
    from .model import mean_aux_loss, router_parameters, set_token_mask

    params = router_parameters(layers)
    if not params:
        raise ConfigError("no module has a router (check router_layers); nothing to train")
    if not train:
        raise DataError("MoE: no training examples")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    collect = balance_loss > 0
    try:
        return fit(model, params, train, optimizer=opt, pad_token_id=pad_token_id, max_steps=max_steps,
                   lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, batch_size=batch_size,
                   grad_accum=grad_accum, seed=seed, precision=precision, device=device,
                   group_by_length=group_by_length, max_grad_norm=1.0,
                   before_forward=lambda b: set_token_mask(layers, b["attention_mask"], collect_aux=collect),
                   aux_loss=(lambda: mean_aux_loss(layers)) if collect else (lambda: None), aux_weight=balance_loss,
                   desc="moe routers" if progress else None, what="MoE", dist=dist,
                   gradient_checkpointing=gradient_checkpointing)
    finally:
        set_token_mask(layers, None, collect_aux=False)
        for p in params:
            p.requires_grad_(False)
        model.eval()


@register_method("moe", kind="routed", space="model",
                 reference="mixture of LoRA experts as in mergoo (used by Prabhakar et al. 2024, §5); top-k gating "
                           "Shazeer et al. 2017; load balancing Fedus et al. 2022",
                 description="frozen skill LoRAs as experts, per-token top-k routers on each adapted module's input; "
                             "not a plain LoRA (saved as an MoE folder)",
                 options=MoeOptions, stage="moe", order=3, title="train MoE routers", refers_to_inputs=True)
def train_moe(base: str, adapters: Sequence[str | os.PathLike], data: Sequence[Any], out: str | os.PathLike, *,
              seed: int = 0, device: str = "auto", data_dir: str | None = None, overwrite: bool = False,
              allow_pickle: bool = False, progress: bool = True, **params: Any) -> Path:
    """Train per-token routers over frozen LoRA experts and save an MoE folder.

    Args:
        base: base model (embedded name, HF folder or hub id).
        adapters: n ≥ 2 PEFT LoRA folders (the experts, in router order).
        data: skill data specs (as for CAT; ``fraction`` of each is used) or tokenised examples.
        out: output MoE folder (``moe_config.json``, ``routers.safetensors``, ``train_log.jsonl``);
            see :mod:`lorasoups.moe.folder`.
        seed: seeds data sampling, batch order and the router init.
        **params: :class:`~lorasoups.train.options.MoeOptions`: ``top_k`` (clipped to n),
            ``router_layers`` (``all``, ``none``, ``"0,2,10-15"``; modules in other layers mix the
            experts uniformly), ``balance_loss``, ``router_init_std`` (0: uniform gates) and the
            shared training options (AdamW on the routers), validated once here.

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: bad options. AdapterError: unreadable experts or experts that do not fit the
        base model. DataError: no examples. FileExistsError: ``out`` exists without ``overwrite``.
    """
    import torch

    from ..io.adapters import read_adapter
    from ..io.card import data_checksums
    from ..models import load_base
    from ..paths import check_not_input
    from ..train.loop import Dist, eval_loss, load_mix, resolve_precision, split_examples, steps_for, unique_names
    from .folder import save_moe_folder
    from .model import attach_moe, init_routers, parse_router_layers, routed_modules, router_parameters

    o = MoeOptions.parse({**params, "seed": seed}, where="moe")
    t_start = time.time()
    adapters = list(adapters)
    data = list(data or [])
    if len(adapters) < 2:
        raise ConfigError(f"a mixture of experts needs at least 2 expert adapters, got {len(adapters)}")
    if not data:
        raise ConfigError("the routers train on skill data: give --data SPEC (e.g. the skill datasets)")
    out = Path(out)
    check_not_input(out, adapters)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")

    dist = Dist(device)
    dev = dist.device
    prec, _ = resolve_precision(o.precision, dev)
    records = [read_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    names = unique_names([r.name for r in records])
    for r, nm in zip(records, names):
        r.name = nm
    torch.manual_seed(seed)
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    n_layers = getattr(model.config, "num_hidden_layers", None)
    layer_list = parse_router_layers(o.router_layers, n_layers)
    modules = sorted({m for r in records for m in r.modules})
    routed = routed_modules(modules, layer_list)
    if not routed:
        raise ConfigError(f"router_layers {o.router_layers!r} selects no adapted module; nothing to train")
    layers = attach_moe(model, records, top_k=o.top_k, routed=routed)
    init_routers(layers, o.router_init_std, seed)

    examples, data_stats, _ = load_mix(data, tok, o, seed=seed, data_dir=data_dir, what="MoE")
    train_ex, val_ex = split_examples(list(examples), o.val_fraction, seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    n_steps = steps_for(len(train_ex), batch_size=o.batch_size, grad_accum=o.grad_accum, epochs=o.epochs,
                        max_steps=o.max_steps, world=dist.world)
    vkw = dict(pad_token_id=pad, batch_size=o.batch_size, precision=prec, device=dev, dist=dist)

    val_before = eval_loss(model, val_ex, **vkw) if val_ex else None
    t_train = time.time()
    log = fit_routers(model, layers, train_ex, pad_token_id=pad, learning_rate=o.learning_rate, max_steps=n_steps,
                      batch_size=o.batch_size, grad_accum=o.grad_accum, lr_scheduler=o.lr_scheduler,
                      warmup_steps=o.warmup_steps, balance_loss=o.balance_loss, seed=seed, precision=prec,
                      device=dev, progress=progress, group_by_length=o.group_by_length, dist=dist,
                      gradient_checkpointing=o.gradient_checkpointing)
    train_s = time.time() - t_train
    val_after = eval_loss(model, val_ex, **vkw) if val_ex else None

    check_not_input(out, adapters)
    training = {
        "options": {**o.model_dump(), "epochs": o.epochs if o.max_steps is None else None, "device": device},
        "data": [d if isinstance(d, str) else "<tokenised examples>" if isinstance(d, dict) else str(d)
                 for d in data][:50],
        "resolved": {"precision": prec, "device": dev, "steps": n_steps, "world_size": dist.world,
                     "train_examples": len(train_ex), "val_examples": len(val_ex),
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
    if dist.is_main:
        save_moe_folder(out, layers, adapters, names, base_model=base, top_k=o.top_k,
                        router_layers="all" if layer_list is None else layer_list, training=training, log=log,
                        overwrite=overwrite)
    dist.wait()
    return out
