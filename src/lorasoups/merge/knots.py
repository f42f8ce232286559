"""``knots``: KnOTS merging (Stoica et al. 2024, "Model merging with SVD to tie the KnOTS",
arXiv 2410.19735, sec. 4).

Per module, with n adapters ΔW_i = s_i B_i A_i, B_i (d_out, r_i), A_i (r_i, d_in), R = Σ r_i:

1. Align (sec. 4, eq. for the concatenated SVD): the side-by-side concatenation
   [ΔW_1 | … | ΔW_n] (d_out, n·d_in) = U Σ [V_1ᵀ | … | V_nᵀ], U (d_out, k), Σ (k, k),
   V_iᵀ (k, d_in), so ΔW_i = U Σ V_iᵀ with one basis U Σ shared by all adapters (k ≤ R).
2. Merge the per-task V_i with the inner method: V_mergedᵀ = inner({V_iᵀ}, {w_i}) (k, d_in).
3. Back: ΔW = U Σ V_mergedᵀ, an exact LoRA of rank k: B = U Σ (d_out, k), A = V_mergedᵀ.

The SVD of step 1 is computed from the factors, never forming the d_out × n·d_in matrix:
[ΔW_1 | … | ΔW_n] = B_cat · blockdiag(A_1, …, A_n) with B_cat = [s_1 B_1 | … | s_n B_n] (d_out, R).
With thin QRs B_cat = Q_B R_B (Q_B (d_out, q_B)) and A_iᵀ = Q_i R_i (Q_i (d_in, q_i)),
[ΔW_1 | … | ΔW_n] = Q_B · C · blockdiag(Q_1, …, Q_n)ᵀ with the small core
C = R_B · blockdiag(R_1ᵀ, …, R_nᵀ) (q_B, Σ q_i). The SVD C = U_C Σ V_Cᵀ then gives
U = Q_B U_C and V_iᵀ = (V_Cᵀ)[:, block i] Q_iᵀ (cost O(R² (d_out + n·d_in)), memory O(n · R · d_in)).
Singular values ≤ :data:`.aligned.RANK_RTOL` · σ_1 are numerically zero and dropped.

With the ``linear`` inner merge, U Σ (Σ w_i V_iᵀ) = Σ w_i ΔW_i exactly. A module missing from an
adapter contributes ΔW_i = 0 (it is left out of the concatenation and of the merge).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch

from ..methods import register_method
from ..types import LoraFactors
from .aligned import AlignedOptions, RANK_RTOL, inner_kwargs, inner_merge, present


def knots_svd(factors: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """SVD of [ΔW_1 | … | ΔW_n] from the LoRA factors (step 1; see the module docstring).

    Args:
        factors: present adapters' A_i (r_i, d_in), B_i (d_out, r_i), scale s_i, any float dtype.

    Returns:
        (U (d_out, k), S (k,), [V_1ᵀ, …, V_nᵀ] each (k, d_in)), float64, with ΔW_i = U diag(S) V_iᵀ;
        U has orthonormal columns, the rows of [V_1ᵀ | … | V_nᵀ] are orthonormal, S is descending and
        k = #{σ_j > RANK_RTOL · σ_1} (at least 1).
    """
    B_cat = torch.cat([f.B.double() * float(f.scale) for f in factors], dim=1)  # (d_out, R)
    Q_B, R_B = torch.linalg.qr(B_cat)  # (d_out, q_B), (q_B, R)
    Qs, RTs = [], []
    for f in factors:
        Q_i, R_i = torch.linalg.qr(f.A.double().T)  # (d_in, q_i), (q_i, r_i)
        Qs.append(Q_i)
        RTs.append(R_i.T)  # (r_i, q_i)
    C = R_B @ torch.block_diag(*RTs)  # (q_B, Σ q_i)
    U_C, S, Vh_C = torch.linalg.svd(C, full_matrices=False)  # (q_B, m), (m,), (m, Σ q_i)
    k = max(1, int((S > RANK_RTOL * S[0]).sum())) if S[0] > 0 else 1
    U = Q_B @ U_C[:, :k]  # (d_out, k)
    Vhs, start = [], 0
    for Q_i in Qs:
        q = Q_i.shape[1]
        Vhs.append(Vh_C[:k, start:start + q] @ Q_i.T)  # (k, d_in)
        start += q
    return U, S[:k], Vhs


@register_method("knots", kind="merge", space="aligned", options=AlignedOptions,
                 reference="Stoica et al. 2024 (KnOTS, arXiv 2410.19735)",
                 description="SVD of [ΔW_1|…|ΔW_n] = UΣ[V_1|…|V_n]ᵀ from the factors, merge the V_i with `inner` "
                             "in the shared UΣ basis (exact LoRA, rank ≤ Σr)")
def knots(factors: Sequence[Optional[LoraFactors]], weights: Sequence[float], *,
          inner: Literal["linear", "ties", "dare_ties", "dare_linear"] = "ties",
          density: Optional[float] = None, trim_density: Optional[float] = None, seed: int = 0) -> LoraFactors:
    """KnOTS merge of one module (see the module docstring for the steps and shapes).

    Args:
        factors: per adapter A_i (r_i, d_in), B_i (d_out, r_i), scale s_i (ranks may differ); None =
            module missing in that adapter (ΔW_i = 0, left out).
        weights: w_i per adapter (applied by the inner merge, as in the method of that name).
        inner: the merge run on the V_iᵀ (k, d_in): ``linear`` (Σ w_i V_iᵀ), ``ties``, ``dare_ties``,
            ``dare_linear``.
        density: the inner merge's density (``ties``: trim; ``dare_*``: DARE kept fraction; None =
            that method's default); a TIES trim picks its
            entries among the k · d_in entries of each V_iᵀ.
        trim_density: ``dare_ties`` only: its TIES trim (None = 1.0, no trim).
        seed: DARE seed (the driver derives one per module).

    Returns:
        LoraFactors (fp32, scale 1) of rank k ≤ Σ r_i: B = U Σ (d_out, k), A = V_mergedᵀ (k, d_in).

    Raises:
        ValueError: no adapter has the module, or ΔW shapes differ.
    """
    kw = inner_kwargs(inner, density, trim_density, seed)
    fs, w = present(factors, weights)
    U, S, Vhs = knots_svd(fs)  # (d_out, k), (k,), n × (k, d_in)
    V_merged_T = inner_merge(torch.stack(Vhs).float(), w, inner, kw)  # (k, d_in)
    return LoraFactors(A=V_merged_T.contiguous(), B=(U * S[None, :]).float().contiguous(), scale=1.0)
