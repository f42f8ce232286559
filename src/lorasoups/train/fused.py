"""Fused concatenation of LoRA adapters with learnable per-adapter coefficients (CAT).

CAT (Prabhakar et al. 2024, *LoRA Soups*, §3 and Fig. 1) gives every adapted module m and adapter
i a coefficient c_{m,i} and computes

    y = W x + Σ_i c_{m,i} s_i B_i A_i x

with the base weight W and the factors A_i (r_i, d_in), B_i (d_out, r_i) frozen. The sum is one
LoRA of rank R = Σ_i r_i with stacked factors A' = [A_1; ...; A_n] (R, d_in) and
B' = [B_1 | ... | B_n] (d_out, R) and a per-rank scale vector v (R,) whose entries for adapter i
are c_{m,i} s_i. :class:`FusedConcatLinear` computes it with two matmuls per module and no loop
over adapters:

    y = W x + B' ((A' x) ⊙ v)

Exported, v is folded into B' (``B' diag(v)``, scaling 1), so the result is a standard PEFT LoRA.

Coefficients live in one :class:`CatCoefficients` module holding logits of shape (G, n): G
coefficient groups (one per module, per decoder layer or one in all, see ``granularity``) and n
adapters. ``normalize="softmax"`` maps a group's logits to weights summing to 1 over the adapters
present in that group (the reference code's choice); ``normalize="none"`` uses the logits as raw
coefficients (the paper's formula).

Adapters with different target modules or layers (``missing``): with ``missing="share"`` (the
default, the reference code's behaviour) the softmax of a module runs over all n adapters, so an
adapter that lacks the module still holds a share there and the present adapters are scaled down
(a free "turn down" knob); with ``missing="exclude"`` it runs only over the adapters that have the
module, so their coefficients sum to 1 in every module. Raw coefficients (``none``) have no
normalisation to share: both values give the same result there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError, ConfigError
from ..types import AdapterRecord, LoraFactors
from ..wrap import LinearWrapper, layer_index, replace_module

GRANULARITIES = ("module", "layer", "global")
NORMALIZATIONS = ("softmax", "none")
MISSING = ("share", "exclude")


# ----------------------------------------------------------------------------- pure functions

def group_key(module: str, granularity: str) -> str:
    """The coefficient group of ``module``: its own path (``module``), ``layers.<i>`` (``layer``;
    modules outside decoder layers share ``other``), or ``all`` (``global``).

    Raises:
        ConfigError: unknown granularity.
    """
    if granularity == "module":
        return module
    if granularity == "layer":
        i = layer_index(module)
        return f"layers.{i}" if i is not None else "other"
    if granularity == "global":
        return "all"
    raise ConfigError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")


def parse_init(init: str | float | Sequence[float], n: int) -> str | list[float]:
    """Parse an ``--init`` value: ``uniform``, ``random``, one number, or n comma-separated numbers.

    Returns:
        ``"uniform"``, ``"random"`` or a list of n floats (one number is repeated n times).

    Raises:
        ConfigError: not a keyword, not numbers, or a list whose length is not n.
    """
    if isinstance(init, (int, float)):
        return [float(init)] * n
    if not isinstance(init, str):
        vals = [float(v) for v in init]
    else:
        s = init.strip().lower()
        if s in ("uniform", "random"):
            return s
        try:
            vals = [float(v) for v in s.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--init {init!r}: use uniform, random, a number, or {n} comma-separated numbers") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"--init {init!r}: got {len(vals)} values for {n} adapters")
    if not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"--init {init!r}: values must be finite")
    return vals


def initial_logits(mask: torch.Tensor, normalize: str, init: str | list[float], seed: int = 0) -> torch.Tensor:
    """Initial coefficient logits, shape (G, n) fp32, for a presence ``mask`` (G, n) bool.

    - ``uniform``: logits 0 under softmax (weights 1/n_present), coefficients 1 under none.
    - ``random``: standard-normal logits drawn from ``torch.Generator().manual_seed(seed)``
      (the reference code's initialisation); under ``none`` they are the raw coefficients.
    - values w_1..w_n: under none the coefficients themselves; under softmax the initial weights
      (renormalised to sum to 1), i.e. logits log w_i, so they must be > 0.

    Raises:
        ConfigError: non-positive values under softmax, unknown normalisation.
    """
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalize {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
    G, n = mask.shape
    if init == "uniform":
        return torch.zeros(G, n) if normalize == "softmax" else torch.ones(G, n)
    if init == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randn(G, n, generator=g)
    vals = torch.tensor([float(v) for v in init], dtype=torch.float32)  # (n,)
    if normalize == "softmax":
        if (vals <= 0).any():
            raise ConfigError(f"--init {list(init)}: initial weights under softmax must be > 0 (they are log-transformed)")
        vals = vals.log()
    return vals.expand(G, n).clone()


def normalize_coefficients(logits: torch.Tensor, mask: torch.Tensor, normalize: str,
                           missing: str = "share") -> torch.Tensor:
    """Coefficients c (G, n) from logits (G, n) and a presence mask (G, n) bool.

    softmax: c_{g,i} = exp(l_{g,i}) / Σ_j exp(l_{g,j}) over all n adapters (LoRA Soups reference
    code; ``missing="share"``) or over the adapters present in the row (``missing="exclude"``);
    none: c = l (paper §3 formula). An adapter absent from a group has ΔW = 0 there, exactly
    as in concatenation merging (so uniform init with ``share`` equals ``concat`` with weights 1/n
    everywhere); its entry is reported as 0. Differentiable in ``logits``.

    Raises:
        ConfigError: unknown ``normalize`` or ``missing``.
    """
    if missing not in MISSING:
        raise ConfigError(f"unknown missing {missing!r}; use one of {', '.join(MISSING)}")
    if normalize == "softmax":
        if missing == "exclude":
            return masked_softmax(logits, mask).masked_fill(~mask, 0.0)
        return torch.softmax(logits, dim=-1).masked_fill(~mask, 0.0)
    if normalize == "none":
        return logits.masked_fill(~mask, 0.0)
    raise ConfigError(f"unknown normalize {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")


def masked_softmax(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``logits`` restricted to ``present`` (same shape, bool):
    absent entries get exactly 0 and the present ones sum to 1 (a row with none present: uniform,
    never NaN). Differentiable in ``logits``."""
    return torch.softmax(logits.masked_fill(~present, torch.finfo(logits.dtype).min), dim=-1)


def stack_factors(factors: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack k modules' factors for the fused product.

    Returns:
        A' (R, d_in) fp32, B' (d_out, R) fp32, scales s (R,) fp32 (s_i repeated r_i times),
        owner (R,) int64 (position 0..k-1 of the factor each rank row came from), R = Σ r_i.
    """
    A = torch.cat([f.A.float() for f in factors], dim=0)  # (R, d_in)
    B = torch.cat([f.B.float() for f in factors], dim=1)  # (d_out, R)
    ranks = torch.tensor([f.r for f in factors])
    s = torch.repeat_interleave(torch.tensor([float(f.scale) for f in factors]), ranks)  # (R,)
    owner = torch.repeat_interleave(torch.arange(len(factors)), ranks)  # (R,)
    return A, B, s, owner


def fused_lora_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """B' ((A' x) ⊙ v) for x (..., d_in), A' (R, d_in), B' (d_out, R), v (R,) -> (..., d_out)."""
    h = F.linear(x, A)  # (..., R)
    return F.linear(h * v.to(h.dtype), B)  # (..., d_out)


# ----------------------------------------------------------------------------- modules

class CatCoefficients(nn.Module):
    """The only trainable tensor of CAT: ``logits`` (G, n) fp32.

    Attributes:
        logits: nn.Parameter (G, n).
        mask: bool buffer (G, n), True where adapter i is present in some module of group g.
        groups: group keys in row order.
        adapter_names: n display names.
        normalize: ``softmax`` or ``none``.
        missing: ``share`` or ``exclude`` (see the module docstring).
    """

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor, groups: list[str], adapter_names: list[str],
                 normalize: str, missing: str = "share"):
        super().__init__()
        if logits.shape != mask.shape or logits.shape != (len(groups), len(adapter_names)):
            raise ValueError(f"logits {tuple(logits.shape)} / mask {tuple(mask.shape)} do not match "
                             f"{len(groups)} groups x {len(adapter_names)} adapters")
        self.logits = nn.Parameter(logits.float().clone())
        self.register_buffer("mask", mask.bool().clone())
        self.groups = list(groups)
        self.adapter_names = list(adapter_names)
        self.normalize = normalize
        if missing not in MISSING:
            raise ConfigError(f"unknown missing {missing!r}; use one of {', '.join(MISSING)}")
        self.missing = missing

    def forward(self) -> torch.Tensor:
        """Normalised coefficients (G, n) (see :func:`normalize_coefficients`; with ``exclude`` the
        softmax of a row runs over the adapters present somewhere in the group; a module lacking
        one of them renormalises over its own, see :meth:`row`)."""
        return normalize_coefficients(self.logits, self.mask, self.normalize, self.missing)

    def row(self, g: int, present: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised coefficients of group ``g`` as one module of the group uses them, shape (n,).

        ``present`` (n,) bool: the adapters that have the module. With ``missing="exclude"`` under
        softmax the softmax runs over those only; otherwise over all n (absent adapters are not
        zeroed: their ΔW is zero in the module anyway)."""
        lg = self.logits[g]
        if self.normalize != "softmax":
            return lg
        if self.missing == "exclude" and present is not None:
            return masked_softmax(lg, present)
        return torch.softmax(lg, dim=-1)


class FusedConcatLinear(LinearWrapper):
    """A frozen ``nn.Linear`` plus the concatenation of k ≤ n LoRAs with learnable coefficients.

    forward(x) = base(x) + B' ((A' x) ⊙ v),  v = (c_g[adapter of each rank row] · s_row)  (R,)

    The stacked factors are buffers (never trained); the coefficients are read from the shared
    :class:`CatCoefficients` (kept by reference, not as a submodule, so the model's parameters
    list them once).

    Attributes:
        base: the original ``nn.Linear`` (weights unchanged).
        lora_A: buffer (R, d_in) fp32; lora_B: buffer (d_out, R) fp32.
        rank_scale: buffer (R,) fp32, s_i of the adapter owning each rank row.
        rank_adapter: buffer (R,) int64, global adapter index (0..n-1) of each rank row.
        adapters: global indices of the adapters present, in stacking order.
        group: row of the coefficient logits used by this module.
    """

    def __init__(self, base: nn.Linear, factors: Sequence[LoraFactors], adapter_ids: Sequence[int], group: int,
                 coefficients: CatCoefficients):
        super().__init__()
        A, B, s, owner = stack_factors(factors)
        self.base = base
        self.register_buffer("lora_A", A.to(base.weight.device))
        self.register_buffer("lora_B", B.to(base.weight.device))
        self.register_buffer("rank_scale", s.to(base.weight.device))
        ids = torch.tensor(list(adapter_ids), dtype=torch.long)
        rank_adapter = ids[owner]  # (R,)
        self.register_buffer("rank_adapter", rank_adapter.to(base.weight.device))
        # scatter (R, n): row k has s_k in the column of its adapter, so v = scatter @ c in one op
        n = coefficients.logits.shape[1]
        scatter = torch.zeros(len(rank_adapter), n)
        scatter[torch.arange(len(rank_adapter)), rank_adapter] = s
        self.register_buffer("rank_scatter", scatter.to(base.weight.device))
        present = torch.zeros(n, dtype=torch.bool)
        present[ids] = True
        self.register_buffer("present", present.to(base.weight.device))  # (n,) adapters that have this module
        self.adapters = list(adapter_ids)
        self.ranks = [f.r for f in factors]
        self.group = int(group)
        self._coef = (coefficients,)  # a tuple keeps it out of the module tree

    @property
    def coefficients(self) -> CatCoefficients:
        return self._coef[0]

    def scale_vector(self) -> torch.Tensor:
        """v (R,) fp32: v_k = c_{g, adapter(k)} · s_k, as one matrix-vector product of the (R, n)
        scatter matrix with the group's coefficients; differentiable in the coefficient logits."""
        return torch.mv(self.rank_scatter, self.coefficients.row(self.group, self.present))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if x.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        d = fused_lora_delta(x, self.lora_A, self.lora_B, self.scale_vector())
        return y + d.to(y.dtype)

    def factors(self) -> list[LoraFactors]:
        """The stacked adapters split back into per-adapter factors (fp32, on CPU), stacking order."""
        As = torch.split(self.lora_A.detach().float().cpu(), self.ranks, dim=0)  # each (r_i, d_in)
        Bs = torch.split(self.lora_B.detach().float().cpu(), self.ranks, dim=1)  # each (d_out, r_i)
        starts = [sum(self.ranks[:k]) for k in range(len(self.ranks))]
        return [LoraFactors(A=a, B=b, scale=float(self.rank_scale[s0])) for a, b, s0 in zip(As, Bs, starts)]

    @torch.no_grad()
    def export(self) -> LoraFactors:
        """The module's LoRA with coefficients folded in (scale 1): A' (R, d_in), B' diag(v) (d_out, R),
        built by :func:`lorasoups.merge.concat.concat_factors` with weights c_{m,i}."""
        from ..merge.concat import concat_factors

        c = self.coefficients.row(self.group, self.present).detach().float().cpu()  # (n,)
        return concat_factors(self.factors(), [float(c[i]) for i in self.adapters])


@dataclass
class CatHandle:
    """What :func:`attach_cat` did to a model, for training, export and :func:`detach_cat`.

    Attributes:
        coefficients: the shared :class:`CatCoefficients` (also set as ``model.cat_coefficients``).
        modules: module path -> wrapper, in model order.
        originals: module path -> the original ``nn.Linear``.
        adapter_names: n names; granularity, normalize, init, missing: the options used.
        initial: a copy of the initial logits (G, n).
    """

    coefficients: CatCoefficients
    modules: dict[str, FusedConcatLinear]
    originals: dict[str, nn.Linear]
    adapter_names: list[str]
    granularity: str
    normalize: str
    init: str | list[float]
    initial: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    missing: str = "share"

    def export_factors(self) -> dict[str, LoraFactors]:
        """module path -> folded rank-Σr factors (scale 1), as written to the PEFT folder."""
        return {m: w.export() for m, w in self.modules.items()}

    def coefficient_table(self) -> dict[str, dict[str, dict[str, float]]]:
        """module -> adapter name -> {"initial", "final"} normalised coefficient (present adapters only),
        as the module uses it (with ``missing="exclude"``: renormalised over the module's adapters)."""
        co = self.coefficients
        with torch.no_grad():
            init = normalize_coefficients(self.initial, co.mask.cpu(), self.normalize, self.missing)
            final = co().detach().cpu()
        out: dict[str, dict[str, dict[str, float]]] = {}
        for m, w in self.modules.items():
            ci, cf = init[w.group], final[w.group]
            if self.missing == "exclude" and self.normalize == "softmax":
                pres = w.present.cpu()
                ci, cf = masked_softmax(self.initial[w.group], pres), co.row(w.group, w.present).detach().cpu()
            out[m] = {self.adapter_names[i]: {"initial": float(ci[i]), "final": float(cf[i])} for i in w.adapters}
        return out


def attach_cat(model: nn.Module, adapters: Sequence[AdapterRecord], *, granularity: str = "module",
               normalize: str = "softmax", init: str | float | Sequence[float] = "uniform", seed: int = 0,
               missing: str = "share") -> CatHandle:
    """Wrap every module adapted by any adapter in a :class:`FusedConcatLinear`, in place.

    All model parameters are frozen (``requires_grad=False``); the only trainable parameter
    afterwards is ``model.cat_coefficients.logits`` (G, n). An adapter that does not adapt a module
    is simply absent from that module's stack (ΔW = 0 there); whether it still holds a softmax
    share there is ``missing``.

    Args:
        model: a loaded base model (e.g. ``LlamaForCausalLM``); module paths as in
            ``model.named_modules()``.
        adapters: n ≥ 2 adapters (any ranks, alphas, rsLoRA, target modules).
        granularity: ``module`` | ``layer`` | ``global`` (see :func:`group_key`).
        normalize: ``softmax`` | ``none``.
        init: ``uniform`` | ``random`` | value(s) (see :func:`initial_logits`).
        seed: seed of ``random`` init.
        missing: ``share`` (softmax over all n adapters in every module) | ``exclude`` (over the
            adapters that have the module).

    Raises:
        ConfigError: fewer than 2 adapters, unknown option, model already wrapped.
        AdapterError: an adapter's module is missing from the model, is not an ``nn.Linear``,
            or its shapes disagree with the module (message names adapter and module).
    """
    if len(adapters) < 2:
        raise ConfigError(f"CAT needs at least 2 adapters, got {len(adapters)}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalize {normalize!r}; use one of {', '.join(NORMALIZATIONS)}")
    if missing not in MISSING:
        raise ConfigError(f"unknown missing {missing!r}; use one of {', '.join(MISSING)}")
    if hasattr(model, "cat_coefficients"):
        raise ConfigError("model already has CAT modules attached; call detach_cat first")
    from .loop import unique_names

    names = unique_names([a.name for a in adapters])
    n = len(adapters)
    init_p = parse_init(init, n)
    mods = dict(model.named_modules())
    # Module paths in model order; for each, the adapters (index, factors) present.
    order = {m: k for k, m in enumerate(mods)}
    present: dict[str, list[tuple[int, LoraFactors]]] = {}
    for i, a in enumerate(adapters):
        src = a.source or a.name
        for m, f in a.modules.items():
            lin = mods.get(m)
            if lin is None:
                raise AdapterError(f"{src}: module {m} is not in the base model "
                                   f"({type(model).__name__}); wrong base model?")
            if not isinstance(lin, nn.Linear):
                raise AdapterError(f"{src}: module {m} is a {type(lin).__name__}, not nn.Linear; "
                                   "only linear LoRA modules can be concatenated")
            if (f.d_out, f.d_in) != (lin.out_features, lin.in_features):
                raise AdapterError(f"{src}: module {m}: ΔW shape ({f.d_out}, {f.d_in}) does not match the base "
                                   f"layer ({lin.out_features}, {lin.in_features})")
            present.setdefault(m, []).append((i, f))
    paths = sorted(present, key=lambda m: order[m])
    groups: list[str] = []
    gidx: dict[str, int] = {}
    for m in paths:
        k = group_key(m, granularity)
        if k not in gidx:
            gidx[k] = len(groups)
            groups.append(k)
    mask = torch.zeros(len(groups), n, dtype=torch.bool)
    for m in paths:
        for i, _ in present[m]:
            mask[gidx[group_key(m, granularity)], i] = True
    logits = initial_logits(mask, normalize, init_p, seed)
    coefs = CatCoefficients(logits, mask, groups, names, normalize, missing)
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    coefs.to(device)
    wrappers: dict[str, FusedConcatLinear] = {}
    originals: dict[str, nn.Linear] = {}
    for m in paths:
        lin = mods[m]
        ids = [i for i, _ in present[m]]
        w = FusedConcatLinear(lin, [f for _, f in present[m]], ids, gidx[group_key(m, granularity)], coefs)
        replace_module(model, m, w)
        wrappers[m] = w
        originals[m] = lin
    model.cat_coefficients = coefs  # registered as a submodule: model.parameters() yields the logits once
    return CatHandle(coefs, wrappers, originals, names, granularity, normalize, init_p, logits.clone(), missing)


def detach_cat(model: nn.Module, handle: CatHandle) -> None:
    """Put the original ``nn.Linear`` modules back and remove ``model.cat_coefficients``."""
    for m, lin in handle.originals.items():
        replace_module(model, m, lin)
    if hasattr(model, "cat_coefficients"):
        del model.cat_coefficients
