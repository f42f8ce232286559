"""Wrapping a causal LM with :class:`MoeLoraLinear` modules; which layers get routers."""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from ..errors import AdapterError, ConfigError
from ..types import AdapterRecord
from ..wrap import layer_index, replace_module
from .layer import MoeLoraLinear

def parse_router_layers(spec: str | int | Sequence[int] | None, num_layers: int | None = None) -> list[int] | None:
    """Decoder layers that get routers.

    Args:
        spec: ``"all"`` / None (every layer; returns None), ``"none"`` (no router anywhere), a
            comma list of indices and inclusive ranges (``"0,2,10-15"``; negative indices count
            from the end when ``num_layers`` is known), or a sequence of ints.

    Returns:
        Sorted list of layer indices, or None for "all".

    Raises:
        ConfigError: malformed spec or an index outside ``[0, num_layers)``.
    """
    if spec is None:
        return None
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s in ("all", "*", ""):
            return None
        if s == "none":
            return []
        items = []
        for part in s.split(","):
            part = part.strip()
            m = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"--router-layers: cannot read {part!r} in {spec!r}; use 'all', 'none' or e.g. '0,2,10-15'")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            if m.group(2) is not None and (a < 0 or b < a):
                raise ConfigError(f"--router-layers: bad range {part!r} in {spec!r}")
            items.extend(range(a, b + 1))
    else:
        items = [int(i) for i in spec]
    out = set()
    for i in items:
        j = i + num_layers if (i < 0 and num_layers is not None) else i
        if j < 0 or (num_layers is not None and j >= num_layers):
            raise ConfigError(f"--router-layers: layer {i} is outside the model's {num_layers} layers")
        out.add(j)
    return sorted(out)


def routed_modules(modules: Sequence[str], layers: list[int] | None) -> list[str]:
    """Modules that get a router: all of them when ``layers`` is None, else those whose decoder
    layer index is in ``layers`` (modules outside decoder layers get none)."""
    if layers is None:
        return sorted(modules)
    keep = set(layers)
    return sorted(m for m in modules if layer_index(m) in keep)


def attach_moe(model: nn.Module, experts: Sequence[AdapterRecord], *, top_k: int,
               routed: Sequence[str] | None = None) -> dict[str, MoeLoraLinear]:
    """Replace every module adapted by any expert with a :class:`MoeLoraLinear`, in place.

    Args:
        experts: the LoRA experts (n ≥ 1); their factors are copied into frozen buffers.
        top_k: experts per token (clipped to n).
        routed: modules that get a router (default: all wrapped modules); the others mix their
            experts uniformly (1/n).

    Returns:
        module path -> wrapper. Every parameter of the model except the routers is frozen; routers
        start at zero (uniform gates) — see :func:`init_routers`.

    Raises:
        AdapterError: a module is missing from the model, is not a linear layer, or has another shape.
        ConfigError: no experts, or a routed module that no expert adapts.
    """
    if not experts:
        raise ConfigError("a mixture of LoRA experts needs at least one expert adapter")
    for p in model.parameters():
        p.requires_grad_(False)
    modules = sorted({m for e in experts for m in e.modules})
    routed_set = set(modules if routed is None else routed)
    unknown = routed_set - set(modules)
    if unknown:
        raise ConfigError(f"routed modules not adapted by any expert: {sorted(unknown)[:5]}")
    out: dict[str, MoeLoraLinear] = {}
    for m in modules:
        names = ", ".join(e.name for e in experts if m in e.modules)
        try:
            base = model.get_submodule(m)
        except AttributeError:
            raise AdapterError(f"expert(s) {names}: module {m} does not exist in the base model") from None
        if isinstance(base, MoeLoraLinear):
            raise ConfigError(f"module {m} is already wrapped as a mixture of experts")
        if not isinstance(base, nn.Linear):
            raise AdapterError(f"expert(s) {names}: module {m} is a {type(base).__name__}, not a torch.nn.Linear")
        w = MoeLoraLinear(base, [e.modules.get(m) for e in experts], top_k=top_k, routed=m in routed_set,
                          where=f"module {m} (experts {names})")
        replace_module(model, m, w)
        out[m] = w
    return out


def moe_layers(model: nn.Module) -> dict[str, MoeLoraLinear]:
    """Every :class:`MoeLoraLinear` in ``model`` by the path of the module it replaced."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, MoeLoraLinear)}


def router_parameters(layers: dict[str, MoeLoraLinear]) -> list[nn.Parameter]:
    """The trainable router weights (one (n, d_in) fp32 matrix per routed module)."""
    return [w.router.weight for w in layers.values() if w.router is not None]


@torch.no_grad()
def init_routers(layers: dict[str, MoeLoraLinear], std: float, seed: int = 0) -> None:
    """Fill router weights with N(0, std²), seeded, in sorted module order (std 0 -> zeros,
    i.e. uniform gates over the top-k experts)."""
    g = torch.Generator().manual_seed(int(seed))
    for m in sorted(layers):
        r = layers[m].router
        if r is None:
            continue
        w = torch.randn(r.weight.shape, generator=g) * float(std) if std > 0 else torch.zeros(r.weight.shape)
        r.weight.copy_(w.to(r.weight.device))


def router_state(layers: dict[str, MoeLoraLinear]) -> dict[str, torch.Tensor]:
    """``<module>.router.weight`` -> (n, d_in) fp32 tensor (CPU, contiguous), for saving."""
    return {f"{m}.router.weight": w.router.weight.detach().float().cpu().contiguous()
            for m, w in sorted(layers.items()) if w.router is not None}


def set_token_mask(layers: dict[str, MoeLoraLinear], mask: torch.Tensor | None, collect_aux: bool) -> None:
    """Tell every routed layer which tokens are real ((b, T) mask) and whether to compute the
    load-balancing statistics on the next forward."""
    for w in layers.values():
        w.token_mask = mask
        w.collect_aux = collect_aux
        w.aux_loss = None


def mean_aux_loss(layers: dict[str, MoeLoraLinear]) -> torch.Tensor | None:
    """Mean load-balancing loss over routed layers from the last forward (None if none stored)."""
    vals = [w.aux_loss for w in layers.values() if w.aux_loss is not None]
    if not vals:
        return None
    return torch.stack(vals).mean()
