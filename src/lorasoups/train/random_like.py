"""Random-like LoRAs: the parameter-free control of a merge (Liu et al. 2026, *The Appeal and Reality
of Recycling LoRAs with Adaptive Merging*, arXiv 2602.12323, found that adaptive merges over LoRAs
with random parameters did about as well as over the trained ones).

A random-like LoRA keeps everything of an adapter but what it learned: the same modules, ranks,
scales and config (r, ``lora_alpha``, target modules, layers), with ``lora_A`` and ``lora_B`` drawn
from a seeded standard Gaussian and rescaled per module so that

- ``norm="delta"`` (default): ||A'||_F = ||A||_F and the module's delta weight ΔW' = s·B'A' has the
  Frobenius norm of the original ΔW = s·BA (the size of the update the model sees);
- ``norm="factors"``: ||A'||_F = ||A||_F and ||B'||_F = ||B||_F (then ||ΔW'|| differs in general).

Products are never formed at d_out × d_in: ||BA||_F² = tr((BᵀB)(AAᵀ)) and
⟨BA, B'A'⟩_F = tr((BᵀB')(A'Aᵀ)) use only r × r matrices.

Seeds: adapter i of a list gets its own seed :func:`adapter_seed` (seed, i), and every module its own
generator seeded from (adapter seed, module path), so a module's draw depends on nothing else.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal, Sequence

import torch

from ..types import AdapterRecord, LoraFactors

NORMS = ("delta", "factors")
Norm = Literal["delta", "factors"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (SHA-256 of their text; the same on every platform and run)."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def adapter_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th adapter of a list drawn with ``seed`` (a different one per adapter)."""
    return derive_seed("random_like", seed, index)


def delta_sq_norm(B: torch.Tensor, A: torch.Tensor) -> float:
    """||B A||_F² = tr((BᵀB)(AAᵀ)) from r × r products, in float64.

    Args:
        B: (d_out, r); A: (r, d_in); any float dtype.
    """
    B64, A64 = B.double(), A.double()
    return max(float(((B64.T @ B64) * (A64 @ A64.T)).sum()), 0.0)


def delta_inner(B: torch.Tensor, A: torch.Tensor, B2: torch.Tensor, A2: torch.Tensor) -> float:
    """⟨B A, B2 A2⟩_F = tr((BᵀB2)(A2Aᵀ)) = Σ (BᵀB2) ⊙ (A A2ᵀ), float64; ranks may differ.

    Args:
        B: (d_out, r), A: (r, d_in), B2: (d_out, r2), A2: (r2, d_in).
    """
    return float(((B.double().T @ B2.double()) * (A.double() @ A2.double().T)).sum())


def random_like_factors(f: LoraFactors, generator: torch.Generator, norm: Norm = "delta") -> LoraFactors:
    """Gaussian factors of ``f``'s shapes and scale, rescaled to its norms (see the module docstring).

    Args:
        f: the original factors, A (r, d_in), B (d_out, r).
        generator: a seeded CPU generator (A is drawn first, then B).
        norm: ``delta`` (match ||A|| and ||s·BA||) or ``factors`` (match ||A|| and ||B||).

    Returns:
        factors of the same shapes, dtype and scale. A zero A (or zero ΔW with ``delta``, zero B with
        ``factors``) gives a zero factor.

    Raises:
        ValueError: unknown ``norm``.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    gA = torch.randn(tuple(f.A.shape), generator=generator, dtype=torch.float64)
    gB = torch.randn(tuple(f.B.shape), generator=generator, dtype=torch.float64)
    a_norm = float(torch.linalg.vector_norm(f.A.double()))
    A2 = gA * (a_norm / float(torch.linalg.vector_norm(gA))) if a_norm > 0 else torch.zeros_like(gA)
    if norm == "factors":
        b_norm = float(torch.linalg.vector_norm(f.B.double()))
        B2 = gB * (b_norm / float(torch.linalg.vector_norm(gB))) if b_norm > 0 else torch.zeros_like(gB)
    else:
        want = math.sqrt(delta_sq_norm(f.B, f.A))
        have = math.sqrt(delta_sq_norm(gB, A2))
        B2 = gB * (want / have) if want > 0 and have > 0 else torch.zeros_like(gB)
    return LoraFactors(A=A2.to(f.A.dtype), B=B2.to(f.B.dtype), scale=f.scale)


def random_like(record: AdapterRecord, *, seed: int, norm: Norm = "delta") -> AdapterRecord:
    """A random-like copy of one adapter: per module, :func:`random_like_factors` with a generator
    seeded by :func:`derive_seed` (``seed``, module path). Pure: ``record`` is not changed.

    Returns:
        an :class:`AdapterRecord` with the same modules, shapes, dtypes, scales, config and base model,
        named ``random_like(<name>)``, with no source folder.
    """
    mods = {}
    for m in sorted(record.modules):
        g = torch.Generator().manual_seed(derive_seed(seed, m))
        mods[m] = random_like_factors(record.modules[m], g, norm)
    return AdapterRecord(modules=mods, base_model=record.base_model, config=dict(record.config), source=None,
                         name=f"random_like({record.name})")


def random_like_adapters(records: Sequence[AdapterRecord], *, seed: int, norm: Norm = "delta") -> list[AdapterRecord]:
    """:func:`random_like` of every adapter, adapter i with seed :func:`adapter_seed` (``seed``, i)."""
    return [random_like(r, seed=adapter_seed(seed, i), norm=norm) for i, r in enumerate(records)]


def compare(original: AdapterRecord, other: AdapterRecord) -> dict[str, Any]:
    """Norms and alignment of two adapters over the modules of ``original`` (for the record a
    control writes): total Frobenius norms sqrt(Σ_m ||ΔW_m||²), sqrt(Σ ||A_m||²), sqrt(Σ ||B_m||²) of each,
    the largest relative per-module ΔW-norm mismatch, and the mean and largest |cos(ΔW_m, ΔW'_m)|.

    Raises:
        KeyError: a module of ``original`` missing from ``other``.
    """
    tot = {"delta": [0.0, 0.0], "A": [0.0, 0.0], "B": [0.0, 0.0]}
    cos, mismatch = [], 0.0
    for m, f in original.modules.items():
        g = other.modules[m]
        d0 = delta_sq_norm(f.B, f.A) * f.scale**2
        d1 = delta_sq_norm(g.B, g.A) * g.scale**2
        tot["delta"][0] += d0
        tot["delta"][1] += d1
        for key, x, y in (("A", f.A, g.A), ("B", f.B, g.B)):
            tot[key][0] += float(torch.linalg.vector_norm(x.double())) ** 2
            tot[key][1] += float(torch.linalg.vector_norm(y.double())) ** 2
        if d0 > 0:
            mismatch = max(mismatch, abs(math.sqrt(d1) - math.sqrt(d0)) / math.sqrt(d0))
        if d0 > 0 and d1 > 0:
            ip = delta_inner(f.B, f.A, g.B, g.A) * f.scale * g.scale
            cos.append(abs(ip) / math.sqrt(d0 * d1))
    r6 = lambda x: round(x, 6)  # noqa: E731
    return {"modules": len(original.modules),
            "delta_norm": [r6(math.sqrt(v)) for v in tot["delta"]],
            "A_norm": [r6(math.sqrt(v)) for v in tot["A"]],
            "B_norm": [r6(math.sqrt(v)) for v in tot["B"]],
            "max_rel_delta_norm_mismatch": float(f"{mismatch:.3g}"),
            "abs_cosine_mean": r6(sum(cos) / len(cos)) if cos else None,
            "abs_cosine_max": r6(max(cos)) if cos else None}
