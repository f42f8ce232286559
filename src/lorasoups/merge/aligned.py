"""Shared pieces of the aligned-basis merges (:mod:`.knots`, :mod:`.core_space`).

Both methods rewrite every ΔW_i = s_i B_i A_i in one basis shared by the n adapters, run an
*inner* merge (``linear``, ``ties``, ``dare_ties`` or ``dare_linear``, the same pure functions as the
registered methods of those names) on the stacked per-adapter coordinates, and map the result back.
This module holds the inner-merge dispatch, the options (:class:`AlignedOptions`), and the rank-revealing
orthonormal basis used by both.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch
from pydantic import model_validator

from ..spec import Spec, opt
from ..types import LoraFactors
from .dare_linear import DareOptions, dare_linear
from .dare_ties import DareTiesOptions, dare_ties
from .magnitude_prune import density_opt
from .ties import TiesOptions, ties

INNER_MERGES = ("linear", "ties", "dare_ties", "dare_linear")
# Rounding level of fp32 inputs seen through fp64 bases. Singular values ≤ RANK_RTOL · σ_1 are
# numerically zero: their directions are dropped from a basis (loss ≤ RANK_RTOL · sqrt(k) relative).
# Coordinates with |x| ≤ RANK_RTOL · max_i max|X_i| (the largest coordinate of any adapter) are set
# to exact zeros before the inner merge, so that TIES's disjoint mean does not count rounding noise
# (e.g. the coordinates of a ΔW_i = 0) as an agreeing entry.
RANK_RTOL = 1e-6


def _linear_stack(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i w_i X_i: (n, p, q), (n,) -> (p, q) fp32."""
    return torch.einsum("n,npq->pq", weights.float(), stack.float())


_INNER_FNS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": _linear_stack, "ties": ties, "dare_ties": dare_ties, "dare_linear": dare_linear}
_INNER_OPTIONS: dict[str, frozenset[str]] = {
    "linear": frozenset(), "ties": frozenset(TiesOptions.model_fields),
    "dare_linear": frozenset(DareOptions.model_fields), "dare_ties": frozenset(DareTiesOptions.model_fields)}


class AlignedOptions(Spec):
    """Options of ``knots`` and ``core_space``: the inner merge and the options passed on to it."""

    renamed = DareOptions.renamed
    rename_hints = DareOptions.rename_hints
    inner: Literal["linear", "ties", "dare_ties", "dare_linear"] = opt("ties", "merge run in the shared basis")
    density: Optional[float] = density_opt(None, "the inner merge's density (ties: trim; dare_*: DARE kept "
                                                 "fraction); none = that method's default")
    trim_density: Optional[float] = density_opt(None, "dare_ties only: the TIES trim after DARE (none = 1.0)")
    seed: int = opt(0, "DARE seed (the driver derives one per module)")

    @model_validator(mode="after")
    def _inner_takes(self) -> "AlignedOptions":
        takes = _INNER_OPTIONS[self.inner]
        for key in ("density", "trim_density"):
            if getattr(self, key) is not None and key not in takes:
                raise ValueError(f"inner merge {self.inner!r} has no option {key!r} "
                                 f"(it takes: {', '.join(sorted(takes - {'seed'})) or 'none'})")
        return self


def inner_kwargs(inner: str, density: float | None, trim_density: float | None, seed: int) -> dict[str, Any]:
    """Keyword arguments for the inner merge: the given options it takes (others left at its defaults).

    Args:
        inner: one of :data:`INNER_MERGES` (the combination is checked by :class:`AlignedOptions`).
        density, trim_density: passed on when not None.
        seed: DARE seed (passed to ``dare_*`` only).
    """
    given = {"density": density, "trim_density": trim_density, "seed": int(seed)}
    return {k: v for k, v in given.items() if k in _INNER_OPTIONS[inner] and v is not None}


def inner_merge(stack: torch.Tensor, weights: Sequence[float], inner: str, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run the inner merge on per-adapter coordinates in the shared basis.

    Args:
        stack: (n, p, q), one coordinate matrix X_i per adapter (any float dtype).
        weights: n floats.
        inner, kwargs: from :func:`inner_kwargs`.

    Returns:
        (p, q) fp32: the inner merge of the X_i, after entries with |x| ≤ RANK_RTOL · max|X| are
        set to 0 (rounding noise; see :data:`RANK_RTOL`).
    """
    X = stack.float().clone()  # (n, p, q)
    X.masked_fill_(X.abs() <= RANK_RTOL * X.abs().max(), 0.0)
    w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    return _INNER_FNS[inner](X, w, **kwargs)


def present(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> tuple[list[LoraFactors], list[float]]:
    """Drop adapters that lack the module (None) and check shapes.

    Returns:
        (present factors, their weights).

    Raises:
        ValueError: lengths differ, every entry is None, or (d_out, d_in) differ.
    """
    if len(factors) != len(weights):
        raise ValueError(f"got {len(factors)} factors but {len(weights)} weights")
    pairs = [(f, float(w)) for f, w in zip(factors, weights) if f is not None]
    if not pairs:
        raise ValueError("no adapter has this module")
    shape = (pairs[0][0].d_out, pairs[0][0].d_in)
    for f, _ in pairs:
        if (f.d_out, f.d_in) != shape:
            raise ValueError(f"ΔW shapes differ: (d_out, d_in) {shape} vs {(f.d_out, f.d_in)}")
    return [f for f, _ in pairs], [w for _, w in pairs]


def column_basis(X: torch.Tensor) -> torch.Tensor:
    """Left singular vectors of a tall matrix X, numerically-zero directions dropped.

    With the thin QR X = Q R and the SVD R = U_R Σ V_Rᵀ, X = (Q U_R) Σ V_Rᵀ is the SVD of X
    (cost O(m c²) for X of shape (m, c), no m × m matrix).

    Args:
        X: (m, c) float64.

    Returns:
        U, (m, k) float64 with orthonormal columns spanning the range of X, ordered by singular
        value; k = #{σ_j > RANK_RTOL · σ_1}, at least 1 (a zero X gives one arbitrary direction).
    """
    Q, R = torch.linalg.qr(X)  # (m, c'), (c', c) with c' = min(m, c)
    Ur, S, _ = torch.linalg.svd(R, full_matrices=False)  # (c', c''), (c'',)
    k = max(1, int((S > RANK_RTOL * S[0]).sum())) if S.numel() and S[0] > 0 else 1
    return Q @ Ur[:, :k]
