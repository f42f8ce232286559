"""``magnitude_prune``: keep the top-``density`` fraction of each ΔW_i by magnitude, then Σ w_i.

The trim step is the first step of TIES (Yadav et al. 2023, sec. 3, "Trim"); on its own it is the
magnitude-pruning baseline of that paper.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..methods import register_method


def check_density(density: float, method: str) -> None:
    """Raise ConfigError unless 0 < density ≤ 1."""
    if not (isinstance(density, (int, float)) and math.isfinite(density) and 0.0 < density <= 1.0):
        raise ConfigError(f"{method}: density must be in (0, 1], got {density!r}")


def keep_count(numel: int, density: float) -> int:
    """Number of entries kept: round(density · numel), at least 1, at most numel."""
    return min(numel, max(1, int(round(density * numel))))


def trim_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the top-``density`` entries of ``delta`` by |value|.

    Args:
        delta: any shape (one ΔW_i, (d_out, d_in)), float.
        density: fraction kept, 0 < density ≤ 1; k = :func:`keep_count` entries.

    Returns:
        bool tensor of ``delta``'s shape, True where |x| ≥ the k-th largest |x|. Ties at the
        threshold are all kept, so slightly more than k entries can survive when values repeat.
    """
    n = delta.numel()
    k = keep_count(n, density)
    if k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    mag = delta.detach().abs()
    flat = mag.reshape(-1).float().cpu().numpy().copy()  # (numel,), partitioned in place below
    flat.partition(n - k)  # introselect: O(numel), exact
    thr = float(flat[n - k])
    del flat
    return mag >= thr


def trim(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the top-``density`` entries of each ΔW_i.

    Args:
        deltas: (n, d_out, d_in) fp32.
    Returns:
        new (n, d_out, d_in) fp32 tensor.
    """
    if density >= 1.0:
        return deltas.clone()
    out = torch.empty_like(deltas)
    for i in range(deltas.shape[0]):
        out[i] = deltas[i] * trim_mask(deltas[i], density)
    return out


@register_method("magnitude_prune", kind="merge", space="delta",
                 reference="Yadav et al. 2023 (TIES-Merging), trim step; magnitude-pruning baseline",
                 description="keep the top-density entries of each ΔW_i by magnitude, then Σ w_i ΔW_i")
def magnitude_prune(deltas: torch.Tensor, weights: torch.Tensor, *, density: float = 0.2) -> torch.Tensor:
    """Magnitude pruning then a weighted sum.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros for a module an adapter lacks).
        weights: (n,) fp32.
        density: fraction of entries of each ΔW_i kept (0 < density ≤ 1).

    Returns:
        Σ_i w_i trim(ΔW_i), (d_out, d_in) fp32.

    Raises:
        ConfigError: density outside (0, 1].
    """
    check_density(density, "magnitude_prune")
    out = torch.zeros(deltas.shape[1:], dtype=torch.float32)
    for i in range(deltas.shape[0]):
        d = deltas[i].float()
        out += float(weights[i]) * (d * trim_mask(d, density))
    return out
