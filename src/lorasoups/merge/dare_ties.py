"""``dare_ties``: DARE's drop and rescale (Yu et al. 2023) followed by TIES (Yadav et al. 2023).

``density`` is DARE's kept fraction (as in ``dare_linear``, PEFT and mergekit); the TIES trim that
may follow is ``trim_density`` (default 1.0: no trim, DARE already sparsifies).
"""

from __future__ import annotations

import torch

from ..methods import register_method
from .dare_linear import DareOptions, drop_and_rescale
from .magnitude_prune import density_opt
from .ties import ties_merge


class DareTiesOptions(DareOptions):
    trim_density: float = density_opt(1.0, "fraction of each dropped-and-rescaled ΔW_i kept by the TIES trim "
                                           "(1.0: no trim, only sign election and disjoint mean)")


@register_method("dare_ties", kind="merge", space="delta", options=DareTiesOptions,
                 reference="Yu et al. 2023 (DARE) + Yadav et al. 2023 (TIES)",
                 description="DARE drop (keep density) and rescale, then TIES (trim to trim_density, elect sign, "
                             "disjoint mean)")
def dare_ties(deltas: torch.Tensor, weights: torch.Tensor, *, density: float = 0.1, trim_density: float = 1.0,
              seed: int = 0) -> torch.Tensor:
    """DARE then TIES.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros where an adapter lacks the module).
        weights: (n,) fp32.
        density: DARE kept fraction q in (0, 1] (dropped entries: 1 − q; survivors × 1/q).
        trim_density: TIES trim density applied after DARE, in (0, 1]; 1.0 (default) skips the trim.
        seed: random seed (the driver derives one per module from this and the module name).

    Returns:
        merged ΔW, (d_out, d_in) fp32.
    """
    return ties_merge(drop_and_rescale(deltas, density, seed), weights, trim_density)
