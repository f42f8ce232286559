"""A linear layer with frozen LoRA experts mixed per token by a learned top-k router.

For an adapted module with frozen base weight W (d_out, d_in) and n LoRA experts
(A_i (r_i, d_in), B_i (d_out, r_i), scale s_i), a token's input x (d_in,) gives

    l = R x                                  router logits, R (n, d_in), no bias
    g = softmax over the top-k entries of l  (zero elsewhere)            (Shazeer et al. 2017, eq. 3-5)
        (for k = 1: g_i = softmax(l)_i of the chosen expert, the Switch gate, Fedus et al. 2022)
    y = W x + Σ_i g_i(x) s_i B_i A_i x

The router reads the module's *own* input, so it works for every module, including ``down_proj``
whose input has the MLP width rather than the hidden size. Experts are stacked so the sum is two
matmuls: y = W x + B' ((A' x) ⊙ v(x)) with A' = [A_1; …; A_n] (R, d_in), B' = [B_1 | … | B_n]
(d_out, R), R = Σ r_i, and v_j(x) = g_{owner(j)}(x) · s_{owner(j)} for rank column j.

An adapter without this module is an expert with ΔW = 0 here (it keeps its router slot, like a
"no-op" expert), which matches the concat merge where a missing module contributes nothing.
Modules without a router mix their experts with fixed weights (default uniform 1/n, i.e. the
linear / concat merge with weights 1/n).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError, ConfigError
from ..types import LoraFactors
from ..wrap import LinearWrapper


def topk_softmax(logits: torch.Tensor, k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token gates over the top-k experts, zero for the others.

    Args:
        logits: (..., n) router logits, float.
        k: experts kept per token, 1 ≤ k ≤ n (k = n is a plain softmax either way).
        renormalize: softmax over the k selected logits, so gates sum to 1 (Mixtral / mergoo,
            Shazeer et al. 2017 eq. 3-5); else the full-softmax probabilities of the selected
            experts (Switch Transformer, Fedus et al. 2022 eq. 1-2), which sum to ≤ 1.

    Returns:
        (gates (..., n) same dtype; indices (..., k) long of the selected experts). Ties are broken
        by ``torch.topk``.

    Raises:
        ConfigError: k outside [1, n].
    """
    n = logits.shape[-1]
    if not 1 <= k <= n:
        raise ConfigError(f"top-k must be between 1 and the number of experts {n}, got {k}")
    if k == n:
        idx = torch.arange(n, device=logits.device).expand(logits.shape)
        return torch.softmax(logits, dim=-1), idx
    vals, idx = logits.topk(k, dim=-1)                              # (..., k)
    if renormalize:
        sel = torch.softmax(vals, dim=-1)                           # (..., k)
    else:
        sel = torch.softmax(logits, dim=-1).gather(-1, idx)         # (..., k)
    return torch.zeros_like(logits).scatter(-1, idx, sel), idx


def gate_mode(top_k: int) -> str:
    """The gating used for ``top_k``: ``renormalized`` softmax over the top-k logits for k ≥ 2;
    for k = 1 that gate is constantly 1 (the router would get no gradient from the LM loss), so
    top-1 uses the Switch Transformer gate ``switch`` (the chosen expert's full-softmax probability)."""
    return "switch" if int(top_k) == 1 else "renormalized"


def load_balance_loss(logits: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer load-balancing loss, extended to top-k (Fedus et al. 2022, eq. 4-6).

    loss = n · Σ_i f_i · P_i, where f_i is the fraction of (token, slot) assignments routed to
    expert i (k slots per token) and P_i the mean full-softmax router probability of expert i, both
    over the scored tokens. It equals 1 for perfectly uniform routing and grows as routing
    concentrates.

    Args:
        logits: (..., n) router logits.
        idx: (..., k) selected experts per token.
        mask: optional (...) bool/int, 1 on real tokens (padding excluded).

    Returns:
        0-d fp32 tensor, differentiable in ``logits`` (through P).
    """
    n, k = logits.shape[-1], idx.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1).reshape(-1, n)            # (T, n)
    dispatch = torch.zeros_like(probs).scatter(-1, idx.reshape(-1, k), 1.0 / k)  # (T, n)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        probs, dispatch = probs[keep], dispatch[keep]
    if probs.shape[0] == 0:
        return torch.zeros((), device=logits.device)
    return n * (dispatch.mean(0) * probs.mean(0)).sum()


class MoeLoraLinear(LinearWrapper):
    """Frozen ``nn.Linear`` + frozen LoRA experts, mixed per token by a router (or fixed weights).

    Args:
        base: the frozen base linear layer, weight (d_out, d_in).
        factors: one entry per expert (n); ``None`` where that expert lacks the module (ΔW = 0).
        top_k: experts per token (clipped to n).
        routed: give this module a trainable router ``nn.Linear(d_in, n, bias=False)`` (fp32);
            otherwise experts are mixed with the fixed weights ``mix`` (default uniform 1/n).
        where: name used in error messages.

    Attributes set from outside during training: ``token_mask`` ((b, T), excluded from the
    balance statistics where 0) and ``collect_aux`` (store ``aux_loss`` on each forward).

    Raises:
        AdapterError: an expert's shape differs from the base module.
        ConfigError: no expert has the module.
    """

    def __init__(self, base: nn.Linear, factors: Sequence[LoraFactors | None], *, top_k: int, routed: bool,
                 mix: Sequence[float] | None = None, where: str = ""):
        super().__init__()
        self.base = base
        self.n = len(factors)
        present = [(i, f) for i, f in enumerate(factors) if f is not None]
        if not present:
            raise ConfigError(f"{where}: no expert adapts this module")
        for i, f in present:
            if (f.d_out, f.d_in) != (base.out_features, base.in_features):
                raise AdapterError(f"{where}: expert {i} has ΔW shape (d_out {f.d_out}, d_in {f.d_in}) but the base "
                                   f"module is (out {base.out_features}, in {base.in_features})")
        self.top_k = max(1, min(int(top_k), self.n))
        A = torch.cat([f.A.float() for _, f in present], dim=0)   # (R, d_in)
        B = torch.cat([f.B.float() for _, f in present], dim=1)   # (d_out, R)
        owner = torch.cat([torch.full((f.r,), i, dtype=torch.long) for i, f in present])          # (R,)
        scale = torch.cat([torch.full((f.r,), float(f.scale), dtype=torch.float32) for _, f in present])  # (R,)
        dev = base.weight.device
        self.register_buffer("lora_A", A.to(dev), persistent=False)
        self.register_buffer("lora_B", B.to(dev), persistent=False)
        self.register_buffer("owner", owner.to(dev), persistent=False)
        self.register_buffer("rank_scale", scale.to(dev), persistent=False)
        w = torch.full((self.n,), 1.0 / self.n) if mix is None else torch.as_tensor(list(mix), dtype=torch.float32)
        if w.shape != (self.n,):
            raise ConfigError(f"{where}: fixed mixing weights need {self.n} entries, got {tuple(w.shape)}")
        self.register_buffer("mix", w.to(dev), persistent=False)
        self.router: nn.Linear | None = None
        if routed:
            self.router = nn.Linear(base.in_features, self.n, bias=False, device=dev, dtype=torch.float32)
            nn.init.zeros_(self.router.weight)
        self.token_mask: torch.Tensor | None = None
        self.collect_aux = False
        self.aux_loss: torch.Tensor | None = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Expert weights (..., n) for inputs x (..., d_in), in the router's dtype (fp32 unless the
        model was cast); the fixed ``mix`` when unrouted."""
        if self.router is None:
            return self.mix.expand(*x.shape[:-1], self.n)
        logits = self.router(x.to(self.router.weight.dtype))        # (..., n)
        g, idx = topk_softmax(logits, self.top_k, renormalize=gate_mode(self.top_k) == "renormalized")
        if self.collect_aux:
            mask = self.token_mask
            if mask is not None and mask.shape != x.shape[:-1]:
                mask = None
            self.aux_loss = load_balance_loss(logits, idx, mask)
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = F.linear(x.to(self.lora_A.dtype), self.lora_A)          # (..., R), fp32 unless the model was cast
        if self.router is None:
            v = self.mix[self.owner] * self.rank_scale              # (R,)
        else:
            v = self.gates(x)[..., self.owner] * self.rank_scale    # (..., R)
        return y + F.linear(h * v.to(h.dtype), self.lora_B).to(y.dtype)  # (..., d_out)
