"""``dare_ties``: DARE's drop and rescale (Yu et al. 2023) followed by TIES (Yadav et al. 2023)."""

from __future__ import annotations

import torch

from ..methods import register_method
from .dare_linear import check_drop_rate, drop_and_rescale
from .magnitude_prune import check_density
from .ties import ties_merge


@register_method("dare_ties", kind="merge", space="delta", reference="Yu et al. 2023 (DARE) + Yadav et al. 2023 (TIES)",
                 description="DARE drop and rescale, then TIES (trim to density, elect sign, disjoint mean)")
def dare_ties(deltas: torch.Tensor, weights: torch.Tensor, *, drop_rate: float = 0.9, density: float = 1.0,
              seed: int = 0) -> torch.Tensor:
    """DARE then TIES.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros where an adapter lacks the module).
        weights: (n,) fp32.
        drop_rate: DARE drop probability p in [0, 1).
        density: TIES trim density applied after DARE; 1.0 (default) skips the trim, since DARE
            already sparsifies, leaving sign election and disjoint mean.
        seed: random seed (the driver derives one per module from this and the module name).

    Returns:
        merged ΔW, (d_out, d_in) fp32.

    Raises:
        ConfigError: drop_rate outside [0, 1) or density outside (0, 1].
    """
    check_drop_rate(drop_rate, "dare_ties")
    check_density(density, "dare_ties")
    return ties_merge(drop_and_rescale(deltas, drop_rate, seed), weights, density)
