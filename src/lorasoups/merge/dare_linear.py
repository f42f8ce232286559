"""``dare_linear``: DARE (Yu et al. 2023, "Language Models are Super Mario", sec. 3, eq. 2) then Σ w_i.

Drop And REscale: each entry of ΔW_i is kept with probability ``density`` (dropped with probability
p = 1 − density) and the survivors are multiplied by 1/density, so the expectation of the result
equals ΔW_i. ``density`` is the kept fraction, as in PEFT and mergekit (and this project's ``ties``
and ``magnitude_prune``); the former option ``drop_rate`` is ``1 − density``.
"""

from __future__ import annotations

import torch

from ..methods import register_method
from ..spec import Spec, opt
from .magnitude_prune import density_opt


class DareOptions(Spec):
    """Options of DARE's drop and rescale (shared by ``dare_linear`` and ``dare_ties``)."""

    renamed = {"drop_rate": "density"}
    rename_hints = {"drop_rate": "the kept fraction: density = 1 - drop_rate"}
    density: float = density_opt(0.1, "fraction of the entries of each ΔW_i kept by the random drop "
                                      "(survivors rescaled by 1/density); 0.1 drops 90 %")
    seed: int = opt(0, "seed of the drop masks (the driver derives one per module from it)")


def drop_and_rescale(deltas: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE's random drop and rescale, one independent Bernoulli mask per adapter.

    Args:
        deltas: (n, d_out, d_in) fp32.
        density: kept fraction q in (0, 1] (each entry dropped with probability 1 − q).
        seed: seeds a private ``torch.Generator`` (the global RNG is not touched); the masks of
            adapters 0..n−1 are drawn in order from it. The merge driver passes a seed derived
            from the user seed and the module name, so results do not depend on module order.

    Returns:
        new (n, d_out, d_in) fp32 tensor m_i ⊙ ΔW_i / q, m_i ~ Bernoulli(q) (an entry is kept
        where its uniform draw u ≥ 1 − q).
    """
    if density >= 1.0:
        return deltas.float().clone()
    drop = 1.0 - density
    g = torch.Generator().manual_seed(int(seed) % (1 << 63))
    out = torch.empty(deltas.shape, dtype=torch.float32)
    for i in range(deltas.shape[0]):
        keep = torch.rand(deltas.shape[1:], generator=g) >= drop  # (d_out, d_in) bool
        torch.mul(deltas[i].float(), keep, out=out[i])
        out[i] /= density
    return out


@register_method("dare_linear", kind="merge", space="delta", options=DareOptions, reference="Yu et al. 2023 (DARE)",
                 description="keep each entry with prob. density, rescale by 1/density, then Σ w_i ΔW_i")
def dare_linear(deltas: torch.Tensor, weights: torch.Tensor, *, density: float = 0.1, seed: int = 0) -> torch.Tensor:
    """DARE then a weighted sum.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros where an adapter lacks the module).
        weights: (n,) fp32.
        density: kept fraction q in (0, 1] (0.1, i.e. dropping 90 %, is the rate Yu et al. show to be
            harmless for fine-tuned deltas).
        seed: random seed (the driver derives one per module from this and the module name).

    Returns:
        Σ_i w_i m_i ⊙ ΔW_i / q, (d_out, d_in) fp32.
    """
    dropped = drop_and_rescale(deltas, density, seed)
    return torch.einsum("n,nij->ij", weights.float(), dropped)
