"""Shared pieces of the modules that stand in for a base model's ``nn.Linear`` projections
(CAT's fused concatenation, LoRA Hub's swappable merge, the mixture of LoRA experts).

Each wrapper keeps the original layer as ``self.base`` and adds a LoRA path beside it; model code
that reads ``in_features``, ``out_features`` or ``.weight`` of a projection keeps working.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from lorasoups.errors import AdapterError

_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(module: str) -> int | None:
    """Decoder layer index in a module path (``model.layers.3.mlp.down_proj`` -> 3; also GPT-2's
    ``h.3`` and ``blocks.3`` / ``layer.3`` naming), or None for modules outside decoder layers."""
    m = _LAYER_RE.search("." + module)
    return int(m.group(1)) if m else None


class LinearWrapper(nn.Module):
    """Base class of a module that wraps ``self.base`` (an ``nn.Linear``): forwards its shape and
    weight so the wrapper can stand where the linear layer stood."""

    base: nn.Linear

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # model code may read ``.weight`` of a projection (dtype checks)
        return self.base.weight


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``path`` of ``model`` (in place)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def base_linear(model: nn.Module, path: str, where: str) -> nn.Linear:
    """The ``nn.Linear`` at ``path`` in ``model``.

    Raises:
        AdapterError: (message starts with ``where``) no such module, or it is not a plain
            ``torch.nn.Linear`` (already wrapped, an embedding, a quantised layer, ...).
    """
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"{where}: module {path} does not exist in the base model "
                           "(adapter trained on another architecture?)") from None
    if not isinstance(mod, nn.Linear):
        raise AdapterError(f"{where}: module {path} is a {type(mod).__name__}, not a torch.nn.Linear")
    return mod
