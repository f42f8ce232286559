"""Shared pieces of the aligned-basis merges (:mod:`.knots`, :mod:`.core_space`).

Both methods rewrite every ΔW_i = s_i B_i A_i in one basis shared by the n adapters, run an
*inner* merge (``linear``, ``ties``, ``dare_ties`` or ``dare_linear``, the same pure functions as the
registered methods of those names) on the stacked per-adapter coordinates, and map the result back.
This module holds the inner-merge dispatch, its parameter checks, and the rank-revealing
orthonormal basis used by both.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..methods import signature_params
from ..registry import suggest
from ..types import LoraFactors
from .dare_linear import dare_linear
from .dare_ties import dare_ties
from .ties import ties

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


def inner_kwargs(method: str, inner: str, density: float | None, drop_rate: float | None,
                 seed: int) -> dict[str, Any]:
    """Keyword arguments for the inner merge, with the inner method's own defaults filled in.

    Args:
        method: the outer method's name (error messages).
        inner: one of :data:`INNER_MERGES`.
        density: TIES trim density or None (= the inner method's default: ``ties`` 0.2,
            ``dare_ties`` 1.0); only ``ties``/``dare_ties`` take it.
        drop_rate: DARE drop probability or None (= default 0.9); only ``dare_*`` take it.
        seed: DARE seed (ignored by ``linear``/``ties``).

    Returns:
        dict of the parameters the inner function accepts (values are checked by it).

    Raises:
        ConfigError: unknown ``inner`` (with "did you mean"), or ``density``/``drop_rate`` set for an
            inner merge that has no such parameter.
    """
    if inner not in _INNER_FNS:
        raise ConfigError(f"{method}: unknown inner merge {inner!r}{suggest(str(inner), INNER_MERGES)}; "
                          f"choose one of {', '.join(INNER_MERGES)}")
    accepted = signature_params(_INNER_FNS[inner]) if inner != "linear" else {}
    out: dict[str, Any] = {}
    for key, value in (("density", density), ("drop_rate", drop_rate)):
        if key in accepted:
            if value is not None:
                out[key] = value
        elif value is not None:
            raise ConfigError(f"{method}: inner merge {inner!r} has no parameter {key!r} "
                              f"(it takes: {', '.join(accepted) or 'none'})")
    if "seed" in accepted:
        out["seed"] = int(seed)
    return out


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
