"""``magnitude_prune``: keep the top-``density`` fraction of each ΔW_i by magnitude, then Σ w_i.

The trim step is the first step of TIES (Yadav et al. 2023, sec. 3, "Trim"); on its own it is the
magnitude-pruning baseline of that paper.

Large matrices (Llama-2-7B MLP deltas are 11008×4096) are processed in blocks of rows after one
global threshold per ΔW_i, so temporaries stay small.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..methods import register_method
from ..spec import Spec, opt

BLOCK_ELEMENTS = 1 << 20  # entries per row block in blockwise element-wise steps


def density_opt(default: float | None, help: str) -> float | None:
    """A kept-fraction option (0 < x ≤ 1): ``density`` of ties / magnitude_prune / DARE, ``trim_density``."""
    return opt(default, help, gt=0, le=1)


class MagnitudePruneOptions(Spec):
    density: float = density_opt(0.2, "fraction of the entries of each ΔW_i kept, by magnitude")


def keep_count(numel: int, density: float) -> int:
    """Number of entries kept: round(density · numel), at least 1, at most numel."""
    return min(numel, max(1, int(round(density * numel))))


def trim_threshold(delta: torch.Tensor, density: float) -> float | None:
    """The k-th largest |x| of ``delta`` (k = :func:`keep_count`), or None when all are kept.

    Args:
        delta: one ΔW_i, any shape, float.
        density: fraction kept, 0 < density ≤ 1.
    """
    n = delta.numel()
    k = keep_count(n, density)
    if k >= n:
        return None
    flat = delta.detach().abs().reshape(-1).float().cpu().numpy()  # (numel,), a fresh copy
    flat.partition(n - k)  # introselect in place: O(numel), exact
    return float(flat[n - k])


def row_blocks(d_out: int, d_in: int) -> Iterator[slice]:
    """Row slices of about :data:`BLOCK_ELEMENTS` entries covering ``range(d_out)``."""
    step = max(1, BLOCK_ELEMENTS // max(1, d_in))
    for s in range(0, d_out, step):
        yield slice(s, min(d_out, s + step))


def trimmed_weighted(block: torch.Tensor, thresholds: list[float | None], weights: torch.Tensor) -> torch.Tensor:
    """τ̃_i = w_i · trim(ΔW_i) on a row block.

    Args:
        block: (n, b, d_in) rows of the stacked deltas.
        thresholds: per adapter, from :func:`trim_threshold` (None = keep all).
        weights: (n,).
    Returns:
        new (n, b, d_in) fp32 tensor.
    """
    out = block.float().clone()
    for i, thr in enumerate(thresholds):
        if thr is not None:
            out[i].masked_fill_(out[i].abs() < thr, 0.0)
        out[i] *= float(weights[i])
    return out


@register_method("magnitude_prune", kind="merge", space="delta", options=MagnitudePruneOptions,
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
    """
    thresholds = [trim_threshold(d, density) for d in deltas]
    out = torch.empty(deltas.shape[1:], dtype=torch.float32)
    for rows in row_blocks(deltas.shape[1], deltas.shape[2]):
        out[rows] = trimmed_weighted(deltas[:, rows], thresholds, weights).sum(dim=0)
    return out
