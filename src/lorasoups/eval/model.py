"""Loading the model to evaluate: a base model, optionally with a PEFT LoRA adapter folder (loaded
with vanilla ``PeftModel.from_pretrained``, as any user would, when its keys are PEFT's own; known
key variants are mapped; a post-load check refuses any tensor left unattached — see
:mod:`lorasoups.io.attach`) or an MoE folder (loaded with
``lorasoups.moe.load_moe_model``, import-guarded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AdapterError


def _moe_api():
    """``(is_moe_folder, load_moe_model)`` or ``(None, None)`` while lorasoups.moe is unavailable."""
    try:
        from ..moe import is_moe_folder, load_moe_model  # type: ignore[attr-defined]
    except ImportError:
        return None, None
    return is_moe_folder, load_moe_model


def adapter_kind(adapter: str | Path) -> str:
    """``lora`` (a PEFT adapter folder) or ``moe`` (an MoE folder).

    Raises:
        AdapterError: the folder does not exist or is neither kind.
    """
    p = Path(adapter)
    if not p.is_dir():
        raise AdapterError(f"{p}: adapter folder does not exist")
    is_moe, _ = _moe_api()
    if is_moe is not None and is_moe(p):
        return "moe"
    if (p / "adapter_config.json").is_file():
        return "lora"
    hint = "" if is_moe is not None else " (MoE folders need lorasoups.moe, which is not available in this install)"
    raise AdapterError(f"{p}: not a PEFT adapter folder (no adapter_config.json) nor an MoE folder{hint}")


def load_eval_model(base: str, adapter: str | Path | None = None, *, merge_lora: bool = True,
                    device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """Load ``(model, tokenizer, info)`` for evaluation, eval mode, fp32 weights.

    Args:
        base: embedded name, local HF folder or hub id (see :func:`lorasoups.models.resolve_base`).
        adapter: a PEFT LoRA folder or an MoE folder.
        merge_lora: after loading a LoRA with PEFT, fold it into the weights
            (``merge_and_unload``) — same function, faster forward passes.
        device: torch device string (``cpu``, ``cuda``, ``cuda:N``); weights stay fp32 there
            (bf16 is applied by autocast in the generator).

    Raises:
        ModelError: the base model cannot be loaded.
        AdapterError: the adapter folder is missing, malformed or does not fit the base model.
    """
    from ..models import load_base, resolve_base

    model, tok = load_base(base, device=device)
    info: dict[str, Any] = {"base": base, "base_path": resolve_base(base), "adapter": None, "adapter_kind": None}
    if adapter is None:
        return model, tok, info
    kind = adapter_kind(adapter)
    info.update(adapter=str(Path(adapter).resolve()), adapter_kind=kind)
    if kind == "moe":
        _, load_moe = _moe_api()
        try:
            model = load_moe(model, str(adapter))
        except AdapterError as e:
            raise AdapterError(with_bases(str(e), base, adapter)) from None
        model.eval()
        return model, tok, info
    from ..io.attach import load_peft_adapter

    # Every tensor must find its module and every configured module its tensors; known key
    # variants (missing/doubled prefixes, adapter name in the key) are mapped, anything else refused.
    try:
        model, _aligned, remapped = load_peft_adapter(model, adapter)
    except AdapterError as e:
        raise AdapterError(with_bases(str(e), base, adapter)) from None
    info["remapped_modules"] = remapped
    if merge_lora:
        model = model.merge_and_unload()
        info["merged"] = True
    model.eval()
    return model, tok, info


def with_bases(message: str, base: str, adapter: str | Path) -> str:
    """``message`` followed by the two base models involved: the one loaded and the one the
    adapter records (``base_model_name_or_path``), both as given and canonical."""
    from ..io.card import recorded_base
    from ..models import canonical_base_id

    rec = recorded_base(adapter)
    tail = (f" [base model loaded: {base!r} ({canonical_base_id(base)}); the adapter was made for "
            f"{rec!r}" + (f" ({canonical_base_id(rec)})" if rec and canonical_base_id(rec) != rec else "") + "]")
    if rec and canonical_base_id(rec) != canonical_base_id(base):
        tail += " — different base models: pass the adapter's base with --base, or omit --base"
    return message + tail


def checksums(info: dict[str, Any]) -> dict[str, Any]:
    """SHA-256 of every file of the base-model folder and of the adapter folder."""
    from ..provenance import sha256_dir

    out: dict[str, Any] = {}
    bp = Path(info.get("base_path") or "")
    out["base"] = sha256_dir(bp) if bp.is_dir() else None
    if info.get("adapter"):
        out["adapter"] = sha256_dir(info["adapter"])
    return out
