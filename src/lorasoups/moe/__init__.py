"""Mixture of LoRA experts: frozen skill LoRAs mixed per token by trained top-k routers.

Importing this package registers the ``moe`` method (kind ``routed``). Public API:

* :func:`train_moe` — train routers and save an MoE folder (``lorasoups moe``);
* :func:`is_moe_folder`, :func:`load_moe_model` — recognise and load a saved MoE (``lorasoups eval``);
* :class:`MoeLoraLinear`, :func:`attach_moe` — the layer and the in-place model wrapper.

An MoE is not a LoRA (its update depends on each token's gates), so it is saved in its own folder
format, described in :mod:`lorasoups.moe.folder`.
"""

from __future__ import annotations

from .folder import MOE_CONFIG, ROUTERS_FILE, is_moe_folder, load_moe_model, read_moe_config, save_moe_folder
from .layer import MoeLoraLinear, gate_mode, load_balance_loss, topk_softmax
from .model import attach_moe, init_routers, moe_layers, parse_router_layers, routed_modules
from .train import train_moe

__all__ = [
    "MOE_CONFIG", "ROUTERS_FILE", "MoeLoraLinear", "attach_moe", "gate_mode", "init_routers", "is_moe_folder", "load_balance_loss",
    "load_moe_model", "moe_layers", "parse_router_layers", "read_moe_config", "routed_modules", "save_moe_folder", "topk_softmax",
    "train_moe",
]
