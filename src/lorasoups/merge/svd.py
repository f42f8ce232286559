"""SVD step: the best rank-K approximation of a merged ΔW, written as a LoRA of rank K.

By the Eckart–Young–Mirsky theorem the truncated SVD U_K Σ_K V_K^T is the best rank-K
approximation in Frobenius norm, and its error is the norm of the dropped singular values:
‖ΔW − ΔW_K‖_F = sqrt(Σ_{k>K} σ_k²). The factors are split symmetrically,
B = U_K Σ_K^{1/2} (d_out, K), A = Σ_K^{1/2} V_K^T (K, d_in), scale 1.

All computations are in fp32 whatever the input dtype (fp16/bf16 inputs are upcast first).
"""

from __future__ import annotations

import math

import torch

from ..types import LoraFactors

SVD_DRIVERS = ("exact", "randomized")


def _split(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> LoraFactors:
    """U (d_out, K), S (K,), Vh (K, d_in) -> LoraFactors with √S folded into both sides."""
    root = S.clamp_min(0).sqrt()
    return LoraFactors(A=(root[:, None] * Vh).contiguous(), B=(U * root[None, :]).contiguous(), scale=1.0)


def _rel_error(S: torch.Tensor, K: int, total_sq: float) -> float:
    """sqrt(Σ_{k≥K} σ_k²) / ‖ΔW‖_F from the singular values (0 for a zero ΔW).

    ``total_sq`` is ‖ΔW‖_F², computed directly from ΔW (or its factors) so that with a
    randomized driver the error of the written (projected) approximation is still exact:
    ‖ΔW − P ΔW‖² = ‖ΔW‖² − ‖P ΔW‖² for an orthogonal projection P.
    """
    if total_sq <= 0.0:
        return 0.0
    kept = float((S[:K].double() ** 2).sum())
    return math.sqrt(max(total_sq - kept, 0.0) / total_sq)


def truncate_delta(delta: torch.Tensor, rank: int, *, driver: str = "exact",
                   oversample: int = 10, niter: int = 4, seed: int = 0) -> tuple[LoraFactors, float]:
    """Best rank-``rank`` LoRA of a dense ΔW.

    Args:
        delta: ΔW, shape (d_out, d_in), any float dtype (computed in fp32).
        rank: K ≥ 1; capped at min(d_out, d_in).
        driver: ``exact`` (``torch.linalg.svd``; the optimum) or ``randomized``
            (``torch.svd_lowrank`` with ``oversample`` extra columns and ``niter`` power
            iterations, Halko et al. 2011; near-optimal, far faster for 4096×11008 matrices).
        seed: seeds the randomized driver's test matrix.

    Returns:
        (factors with A (K, d_in), B (d_out, K) fp32 and scale 1, relative Frobenius error
        ‖ΔW − B A‖_F / ‖ΔW‖_F of exactly those factors).

    Raises:
        ValueError: rank < 1, a non-2-D ``delta`` or an unknown driver.
    """
    if delta.dim() != 2:
        raise ValueError(f"SVD step needs a 2-D ΔW, got shape {tuple(delta.shape)}")
    if rank < 1:
        raise ValueError(f"SVD rank must be ≥ 1, got {rank}")
    if driver not in SVD_DRIVERS:
        raise ValueError(f"unknown SVD driver {driver!r}; choose one of {SVD_DRIVERS}")
    d = delta.float()
    K = min(int(rank), d.shape[0], d.shape[1])
    if driver == "exact" or K + oversample >= min(d.shape):
        U, S, Vh = torch.linalg.svd(d, full_matrices=False)  # (d_out, m), (m,), (m, d_in)
        total_sq = float((S.double() ** 2).sum())
    else:
        total_sq = float(torch.linalg.vector_norm(d)) ** 2
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            U, S, V = torch.svd_lowrank(d, q=K + oversample, niter=niter)  # (d_out, q), (q,), (d_in, q)
        finally:
            torch.random.set_rng_state(state)
        Vh = V.T
    err = _rel_error(S, K, total_sq)
    return _split(U[:, :K], S[:K], Vh[:K]), err


def truncate_factors(f: LoraFactors, rank: int) -> tuple[LoraFactors, float]:
    """Best rank-``rank`` LoRA of ΔW = s·B·A without forming ΔW (exact; cheap for low rank).

    With thin QR decompositions B = Q_B R_B and Aᵀ = Q_A R_A, ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ, so the
    SVD of the small core C = s R_B R_Aᵀ (at most r×r) gives the singular values and vectors of
    ΔW: U = Q_B U_C, V = Q_A V_C.

    Args:
        f: factors A (r, d_in), B (d_out, r), any float dtype (fp32 used).
        rank: K ≥ 1, capped at min(r, d_out, d_in) (higher ranks would only add zero columns).

    Returns:
        (factors of rank K, fp32, scale 1; relative Frobenius error of the truncation).
    """
    if rank < 1:
        raise ValueError(f"SVD rank must be ≥ 1, got {rank}")
    Qb, Rb = torch.linalg.qr(f.B.float())  # (d_out, k1), (k1, r)
    Qa, Ra = torch.linalg.qr(f.A.float().T)  # (d_in, k2), (k2, r)
    core = (Rb @ Ra.T) * float(f.scale)  # (k1, k2)
    Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
    K = min(int(rank), S.shape[0])
    U = Qb @ Uc[:, :K]  # (d_out, K)
    Vh = Vch[:K] @ Qa.T  # (K, d_in)
    total_sq = float((S.double() ** 2).sum())
    return _split(U, S[:K], Vh), _rel_error(S, K, total_sq)
