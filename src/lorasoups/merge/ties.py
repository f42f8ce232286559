"""``ties``: TIES-Merging (Yadav et al. 2023, "Resolving Interference When Merging Models", sec. 3).

Steps, per module and per entry, on full deltas ΔW_i (n adapters):
1. Trim: keep the top-``density`` fraction of each ΔW_i by magnitude (τ̂_i), zero the rest.
2. Weight: τ̃_i = w_i τ̂_i (the paper has w_i = 1 and scales the result by λ afterwards; with
   weights applied first, weights [1, 0, 0] return the first adapter and weight −1 negates).
3. Elect sign: γ = sgn(Σ_i τ̃_i) (the sign with the larger total magnitude, paper eq. in sec. 3).
4. Disjoint merge: mean over the adapters whose τ̃_i is non-zero and has sign γ:
   τ_m = Σ_{i∈A} τ̃_i / |A|, with A = {i : sgn(τ̃_i) = γ ≠ 0}; entries with |A| = 0 are 0.
"""

from __future__ import annotations

import torch

from ..methods import register_method
from ..spec import Spec
from .magnitude_prune import density_opt, row_blocks, trim_threshold, trimmed_weighted


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """γ = sgn(Σ_i τ̃_i): (n, d_out, d_in) -> (d_out, d_in) fp32 with values in {−1, 0, +1}."""
    return weighted.sum(dim=0).sign_()


def disjoint_mean(weighted: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over adapters of the non-zero entries that agree with ``sign``.

    Args:
        weighted: τ̃, (n, d_out, d_in) fp32.
        sign: γ, (d_out, d_in) in {−1, 0, +1}.

    Returns:
        (d_out, d_in) fp32; 0 where no adapter agrees. Loops over adapters so that temporaries
        are one (d_out, d_in) matrix, not n of them.
    """
    total = torch.zeros(weighted.shape[1:], dtype=torch.float32)  # (d_out, d_in)
    count = torch.zeros(weighted.shape[1:], dtype=torch.int32)  # adapters agreeing per entry
    for t in weighted:
        agree = (t * sign) > 0  # same sign and non-zero; (d_out, d_in) bool
        total += t * agree
        count += agree
    return total.div_(count.clamp_min_(1))


def ties_merge(deltas: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """Trim, weight, elect sign, disjoint mean (see module docstring), in blocks of rows.

    Args:
        deltas: (n, d_out, d_in) fp32. weights: (n,). density: 0 < density ≤ 1 (the trim
            threshold of each ΔW_i is global over the whole matrix).
    Returns:
        (d_out, d_in) fp32.
    """
    thresholds = [trim_threshold(d, density) for d in deltas]
    out = torch.empty(deltas.shape[1:], dtype=torch.float32)  # (d_out, d_in)
    for rows in row_blocks(deltas.shape[1], deltas.shape[2]):
        weighted = trimmed_weighted(deltas[:, rows], thresholds, weights)  # (n, b, d_in)
        out[rows] = disjoint_mean(weighted, elect_sign(weighted))
    return out


class TiesOptions(Spec):
    density: float = density_opt(0.2, "fraction of each ΔW_i kept by the trim step (the paper's k)")


@register_method("ties", kind="merge", space="delta", options=TiesOptions, reference="Yadav et al. 2023 (TIES-Merging)",
                 description="trim to top-density, elect sign, disjoint mean of agreeing entries, weighted")
def ties(deltas: torch.Tensor, weights: torch.Tensor, *, density: float = 0.2) -> torch.Tensor:
    """TIES-Merging of full deltas.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros for a module an adapter lacks, which
            then never takes part in the disjoint mean).
        weights: (n,) fp32, applied after trimming and before the sign election.
        density: fraction of each ΔW_i kept by the trim step (the paper's k; 0.2 = top-20 %).

    Returns:
        merged ΔW, (d_out, d_in) fp32.
    """
    return ties_merge(deltas, weights, density)
