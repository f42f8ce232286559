"""``core_space``: Core Space merging (Panariello et al. 2025, "Accurate and Efficient Low-Rank Model
Merging in Core Space", NeurIPS 2025, arXiv 2509.17786, sec. 3).

Per module, with n adapters ΔW_i = s_i B_i A_i, B_i (d_out, r_i), A_i (r_i, d_in), R = Σ r_i:

1. Reference bases (sec. 3, "core space"): the SVDs of the stacked factors
   B_stack = [B_1 | … | B_n] (d_out, R) = U_B Σ_B V_Bᵀ  ->  U_B (d_out, k_B), orthonormal columns;
   A_stack = [A_1; …; A_n]   (R, d_in)  = U_A Σ_A V_Aᵀ  ->  V_A (d_in, k_A), orthonormal columns;
   k_B, k_A ≤ min(R, d) (numerically-zero directions dropped, see :data:`.aligned.RANK_RTOL`).
2. Projection, lossless: every column of B_i lies in range(U_B) and every row of A_i in range(V_A),
   so with the core M_i = s_i (U_Bᵀ B_i)(A_i V_A) (k_B, k_A) we have ΔW_i = U_B M_i V_Aᵀ exactly.
3. Merge in core space with the inner method: M = inner({M_i}, {w_i}) (k_B, k_A).
4. Back: ΔW = U_B M V_Aᵀ, written as an exact LoRA of rank min(k_B, k_A) ≤ R (no SVD step).

With the ``linear`` inner merge, ΔW = U_B (Σ w_i M_i) V_Aᵀ = Σ w_i ΔW_i exactly. Memory is
O(R · (d_out + d_in)) per module: no d_out × d_in matrix is formed, so it stays cheap on 7B shapes.
Adapters may have different ranks; a module missing from an adapter contributes ΔW_i = 0 (it is left
out of the bases and of the merge, as a zero slice is in TIES).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch

from ..methods import register_method
from ..types import LoraFactors
from .aligned import AlignedOptions, column_basis, inner_kwargs, inner_merge, present


def core_bases(factors: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference bases of the core space (step 1).

    Args:
        factors: present adapters' A_i (r_i, d_in), B_i (d_out, r_i), any float dtype.

    Returns:
        (U_B (d_out, k_B), V_A (d_in, k_A)), float64, orthonormal columns: the left singular
        vectors of [B_1 | … | B_n] and the right singular vectors of [A_1; …; A_n].
    """
    B_stack = torch.cat([f.B.double() for f in factors], dim=1)  # (d_out, R)
    A_stack_T = torch.cat([f.A.double() for f in factors], dim=0).T  # (d_in, R)
    return column_basis(B_stack), column_basis(A_stack_T)


def core_project(f: LoraFactors, U_B: torch.Tensor, V_A: torch.Tensor) -> torch.Tensor:
    """M_i = s_i (U_Bᵀ B_i)(A_i V_A), (k_B, k_A) float64 (step 2; ΔW_i = U_B M_i V_Aᵀ)."""
    return ((U_B.T @ f.B.double()) @ (f.A.double() @ V_A)) * float(f.scale)


@register_method("core_space", kind="merge", space="aligned", options=AlignedOptions,
                 reference="Panariello et al. 2025 (Core Space merging, NeurIPS 2025, arXiv 2509.17786)",
                 description="project each B_i A_i into the Σr×Σr core of the stacked-B / stacked-A SVD bases, "
                             "merge there with `inner`, map back (exact LoRA, rank ≤ Σr)")
def core_space(factors: Sequence[Optional[LoraFactors]], weights: Sequence[float], *,
               inner: Literal["linear", "ties", "dare_ties", "dare_linear"] = "ties",
               density: Optional[float] = None, trim_density: Optional[float] = None, seed: int = 0) -> LoraFactors:
    """Core Space merge of one module (see the module docstring for the steps and shapes).

    Args:
        factors: per adapter A_i (r_i, d_in), B_i (d_out, r_i), scale s_i (ranks may differ); None =
            module missing in that adapter (ΔW_i = 0, left out).
        weights: w_i per adapter (applied by the inner merge, as in the method of that name).
        inner: the merge run on the cores M_i: ``linear`` (Σ w_i M_i), ``ties``, ``dare_ties``,
            ``dare_linear``.
        density: the inner merge's density (``ties``: trim; ``dare_*``: DARE kept fraction; None =
            that method's default); a TIES trim picks its
            entries among the k_B · k_A entries of each M_i.
        trim_density: ``dare_ties`` only: its TIES trim (None = 1.0, no trim).
        seed: DARE seed (the driver derives one per module).

    Returns:
        LoraFactors (fp32, scale 1) of rank min(k_B, k_A) ≤ Σ r_i with ``delta()`` = U_B M V_Aᵀ.

    Raises:
        ValueError: no adapter has the module, or ΔW shapes differ.
    """
    kw = inner_kwargs(inner, density, trim_density, seed)
    fs, w = present(factors, weights)
    U_B, V_A = core_bases(fs)  # (d_out, k_B), (d_in, k_A)
    cores = torch.stack([core_project(f, U_B, V_A) for f in fs]).float()  # (n, k_B, k_A)
    M = inner_merge(cores, w, inner, kw).double()  # (k_B, k_A)
    if U_B.shape[1] <= V_A.shape[1]:
        B, A = U_B, M @ V_A.T  # (d_out, k_B), (k_B, d_in)
    else:
        B, A = U_B @ M, V_A.T  # (d_out, k_A), (k_A, d_in)
    return LoraFactors(A=A.float().contiguous(), B=B.float().contiguous(), scale=1.0)
