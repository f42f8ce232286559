"""``dare_linear``: DARE (Yu et al. 2023, "Language Models are Super Mario", sec. 3, eq. 2) then Σ w_i.

Drop And REscale: each entry of ΔW_i is dropped with probability p = ``drop_rate`` and the survivors
are multiplied by 1/(1 − p), so the expectation of the result equals ΔW_i.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..methods import register_method


def check_drop_rate(drop_rate: float, method: str) -> None:
    """Raise ConfigError unless 0 ≤ drop_rate < 1."""
    if not (isinstance(drop_rate, (int, float)) and math.isfinite(drop_rate) and 0.0 <= drop_rate < 1.0):
        raise ConfigError(f"{method}: drop_rate must be in [0, 1), got {drop_rate!r}")


def drop_and_rescale(deltas: torch.Tensor, drop_rate: float, seed: int) -> torch.Tensor:
    """DARE's random drop and rescale, one independent Bernoulli mask per adapter.

    Args:
        deltas: (n, d_out, d_in) fp32.
        drop_rate: p in [0, 1).
        seed: seeds a private ``torch.Generator`` (the global RNG is not touched); the masks of
            adapters 0..n−1 are drawn in order from it. The merge driver passes a seed derived
            from the user seed and the module name, so results do not depend on module order.

    Returns:
        new (n, d_out, d_in) fp32 tensor m_i ⊙ ΔW_i / (1 − p), m_i ~ Bernoulli(1 − p).
    """
    if drop_rate == 0.0:
        return deltas.float().clone()
    g = torch.Generator().manual_seed(int(seed) % (1 << 63))
    out = torch.empty(deltas.shape, dtype=torch.float32)
    keep_scale = 1.0 / (1.0 - drop_rate)
    for i in range(deltas.shape[0]):
        keep = torch.rand(deltas.shape[1:], generator=g) >= drop_rate  # (d_out, d_in) bool
        torch.mul(deltas[i].float(), keep, out=out[i])
        out[i] *= keep_scale
    return out


@register_method("dare_linear", kind="merge", space="delta", reference="Yu et al. 2023 (DARE)",
                 description="drop entries with prob. drop_rate, rescale by 1/(1-drop_rate), then Σ w_i ΔW_i")
def dare_linear(deltas: torch.Tensor, weights: torch.Tensor, *, drop_rate: float = 0.9,
                seed: int = 0) -> torch.Tensor:
    """DARE then a weighted sum.

    Args:
        deltas: ΔW_i stacked, (n, d_out, d_in) fp32 (zeros where an adapter lacks the module).
        weights: (n,) fp32.
        drop_rate: p in [0, 1) (0.9 is the rate Yu et al. show to be harmless for fine-tuned deltas).
        seed: random seed (the driver derives one per module from this and the module name).

    Returns:
        Σ_i w_i m_i ⊙ ΔW_i / (1 − p), (d_out, d_in) fp32.

    Raises:
        ConfigError: drop_rate outside [0, 1).
    """
    check_drop_rate(drop_rate, "dare_linear")
    dropped = drop_and_rescale(deltas, drop_rate, seed)
    return torch.einsum("n,nij->ij", weights.float(), dropped)
