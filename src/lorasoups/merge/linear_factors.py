"""``linear_factors``: (Σ w_i s_i B_i)(Σ w_i A_i) — the factor-space average some tools use.

Kept only as a documented baseline for comparison with LoRA Hub (Huang et al. 2023, which
combines A and B modules this way) and PEFT's ``add_weighted_adapter(combination_type="linear")``.
It is NOT the weighted sum of updates: expanding the product gives
Σ_i w_i² s_i B_i A_i + Σ_{i≠j} w_i w_j s_i B_i A_j, i.e. weights enter squared (w = −1 does not
negate) and cross terms B_i A_j mix unrelated subspaces of different adapters. It also needs
equal ranks. Use ``linear``/``concat`` for the exact weighted sum.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..methods import register_method
from ..spec import NoOptions
from ..types import LoraFactors


@register_method("linear_factors", options=NoOptions, kind="merge", space="factors",
                 reference="Huang et al. 2023 (LoRA Hub) factor-space combination; baseline only (inexact)",
                 description="(Σ w_i s_i B_i)(Σ w_i A_i): inexact factor-space baseline (cross terms, weights squared)")
def linear_factors(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> LoraFactors:
    """Weighted sums of A and of B separately (inexact; see module docstring).

    Args:
        factors: per adapter A_i (r, d_in), B_i (d_out, r), scale s_i (same r for all present);
            None = module missing in that adapter (skipped).
        weights: w_i per adapter.

    Returns:
        LoraFactors with A' = Σ w_i A_i (r, d_in), B' = Σ w_i s_i B_i (d_out, r), fp32, scale 1.

    Raises:
        ValueError: lengths differ, no factors, or ranks/shapes differ between adapters.
    """
    if len(factors) != len(weights):
        raise ValueError(f"got {len(factors)} factors but {len(weights)} weights")
    present = [(f, float(w)) for f, w in zip(factors, weights) if f is not None]
    if not present:
        raise ValueError("no factors to combine (every adapter lacks this module)")
    f0 = present[0][0]
    for f, _ in present:
        if (f.r, f.d_out, f.d_in) != (f0.r, f0.d_out, f0.d_in):
            raise ValueError("equal ranks and shapes are needed; got (r, d_out, d_in) "
                             f"{(f0.r, f0.d_out, f0.d_in)} and {(f.r, f.d_out, f.d_in)}; use linear or concat instead")
    A = torch.zeros(f0.r, f0.d_in)
    B = torch.zeros(f0.d_out, f0.r)
    for f, w in present:
        A += w * f.A.float()
        B += (w * float(f.scale)) * f.B.float()
    return LoraFactors(A=A, B=B, scale=1.0)
