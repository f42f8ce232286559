"""Core data types.

Shapes follow PEFT: ``lora_A.weight`` is (r, d_in), ``lora_B.weight`` is (d_out, r), and a
module's delta weight is ΔW = scale · B @ A with shape (d_out, d_in) (Hu et al. 2021, eq. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA factors with the scale already resolved.

    Attributes:
        A: ``lora_A`` weight, shape (r, d_in), any float dtype.
        B: ``lora_B`` weight, shape (d_out, r), same dtype as ``A``.
        scale: scalar s (``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` for rsLoRA).
    """

    A: torch.Tensor
    B: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise ValueError(f"LoraFactors needs 2-D A and B, got A {tuple(self.A.shape)}, B {tuple(self.B.shape)}")
        if self.A.shape[0] != self.B.shape[1]:
            raise ValueError(f"rank mismatch: A {tuple(self.A.shape)} (r, d_in) vs B {tuple(self.B.shape)} (d_out, r)")

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    def delta(self) -> torch.Tensor:
        """ΔW = scale · B @ A in fp32, shape (d_out, d_in)."""
        return (self.B.float() @ self.A.float()) * float(self.scale)

    def folded(self) -> "LoraFactors":
        """The same ΔW with the scale folded into B (scale 1), fp32."""
        return LoraFactors(A=self.A.float(), B=self.B.float() * float(self.scale), scale=1.0)


@dataclass
class AdapterRecord:
    """A LoRA adapter as per-module factors.

    Attributes:
        modules: module path in the base model (e.g. ``model.layers.0.self_attn.q_proj``) -> factors.
        base_model: ``base_model_name_or_path`` from the adapter config (may be None).
        config: the original ``adapter_config.json`` as a dict (empty for built records).
        source: the folder it was read from, if any.
        name: a short display name.
        tensor_keys: module -> (lora_A key, lora_B key) as written in the file (for messages
            and to tell canonical PEFT keys from variants); empty for built records.
    """

    modules: dict[str, LoraFactors]
    base_model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    name: str = "adapter"
    tensor_keys: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    @property
    def target_modules(self) -> list[str]:
        """Sorted leaf names of adapted modules (``q_proj``, ...)."""
        return sorted({m.rsplit(".", 1)[-1] for m in self.modules})

    def num_parameters(self) -> int:
        return sum(f.A.numel() + f.B.numel() for f in self.modules.values())
