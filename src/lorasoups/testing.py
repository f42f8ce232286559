"""Helpers for tests and benchmarks: PEFT adapters with random non-zero factors on a base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

ALL_LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_peft_adapter(base_dir: str | Path, out: str | Path, *, r: int = 4, lora_alpha: float = 8,
                      target_modules: Sequence[str] | str = ("q_proj", "v_proj"), use_rslora: bool = False,
                      rank_pattern: dict[str, int] | None = None, alpha_pattern: dict[str, float] | None = None,
                      seed: int = 0, std: float = 0.05, **config_kwargs: Any) -> Path:
    """Create a LoRA with PEFT on the model in ``base_dir``, fill A and B with seeded random
    values (PEFT initialises B to zero, which would hide bugs) and save it to ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
                     use_rslora=use_rslora, rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {},
                     lora_dropout=0.0, task_type="CAUSAL_LM", **config_kwargs)
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    model.save_pretrained(str(out))
    return Path(out)


def peft_logits(base_dir: str | Path, adapter_dir: str | Path | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seq, vocab) of the base model with ``adapter_dir`` loaded by vanilla PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)) if adapter_dir is not None else base
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def base_plus_delta_logits(base_dir: str | Path, deltas: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the base model with ``deltas[module] (d_out, d_in)`` added to its weights."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    mods = dict(base.named_modules())
    with torch.no_grad():
        for m, d in deltas.items():
            mods[m].weight += d.to(mods[m].weight.dtype)
    base.eval()
    with torch.no_grad():
        return base(input_ids=input_ids).logits
