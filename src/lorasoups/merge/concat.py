"""``concat``: the exact rank-sum of weighted LoRAs (PEFT's ``cat``; CAT's final form).

Σ_i w_i s_i B_i A_i = [w_1 s_1 B_1 | ... | w_n s_n B_n] · [A_1; ...; A_n], so a weighted sum of
LoRA updates is itself a LoRA of rank Σ r_i with scale 1 (Prabhakar et al. 2024, "LoRA Soups",
sec. 3, eq. for CAT; Hu et al. 2021, eq. 3). No approximation is made.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..methods import register_method
from ..spec import NoOptions
from ..types import LoraFactors


@register_method("concat", options=NoOptions, kind="merge", space="concat",
                 reference="Prabhakar et al. 2024 (LoRA Soups, CAT final form); PEFT combination_type='cat'",
                 description="exact rank-sum LoRA: A'=[A_1;...;A_n], B'=[w_1 s_1 B_1|...|w_n s_n B_n]")
def concat_factors(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> LoraFactors:
    """Concatenate weighted LoRA factors into one exact LoRA of rank Σ r_i.

    Args:
        factors: one entry per adapter; ``A`` (r_i, d_in), ``B`` (d_out, r_i), scale s_i, any float
            dtype. ``None`` means the module is missing from that adapter (contributes zero) and is
            skipped.
        weights: one float per adapter (may be negative or zero), same length as ``factors``.

    Returns:
        LoraFactors with A' = [A_1; ...; A_n] (Σr_i, d_in) and B' = [w_1 s_1 B_1 | ... | w_n s_n B_n]
        (d_out, Σr_i), both fp32, scale 1, so ``delta()`` = Σ_i w_i ΔW_i exactly (up to fp32 rounding).

    Raises:
        ValueError: lengths differ, every entry is None, or the present factors disagree in d_in / d_out.
    """
    if len(factors) != len(weights):
        raise ValueError(f"got {len(factors)} factors but {len(weights)} weights")
    present = [(f, float(w)) for f, w in zip(factors, weights) if f is not None]
    if not present:
        raise ValueError("no factors to concatenate (every adapter lacks this module)")
    d_out, d_in = present[0][0].d_out, present[0][0].d_in
    for f, _ in present:
        if (f.d_out, f.d_in) != (d_out, d_in):
            raise ValueError(f"ΔW shapes differ: (d_out, d_in) {(d_out, d_in)} vs {(f.d_out, f.d_in)}")
    A = torch.cat([f.A.float() for f, _ in present], dim=0)  # (Σr, d_in)
    B = torch.cat([f.B.float() * (w * float(f.scale)) for f, w in present], dim=1)  # (d_out, Σr)
    return LoraFactors(A=A, B=B, scale=1.0)
