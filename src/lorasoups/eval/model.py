"""Loading the model to evaluate: a base model, optionally with a PEFT LoRA adapter folder (loaded
with vanilla ``PeftModel.from_pretrained``, as any user would, when its keys are PEFT's own; known
key variants are mapped; a post-load check refuses any tensor left unattached — see
:mod:`lorasoups.io.attach`) or an MoE folder (loaded with
``lorasoups.moe.load_moe_model``), and building the generation backend for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import AdapterError, ConfigError


def adapter_kind(adapter: str | Path) -> str:
    """``lora`` (a PEFT adapter folder) or ``moe`` (an MoE folder).

    Raises:
        AdapterError: the folder does not exist or is neither kind.
    """
    p = Path(adapter)
    if not p.is_dir():
        raise AdapterError(f"{p}: adapter folder does not exist")
    from ..moe import is_moe_folder

    if is_moe_folder(p):
        return "moe"
    if (p / "adapter_config.json").is_file():
        return "lora"
    raise AdapterError(f"{p}: not a PEFT adapter folder (no adapter_config.json) nor an MoE folder")


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
        from ..moe import load_moe_model

        try:
            model = load_moe_model(model, str(adapter))
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


def base_for_adapter(adapter: str | Path | None) -> str:
    """The base model to evaluate ``adapter`` on when none is given: the one the adapter records
    (a line on stderr says so), else the default embedded model."""
    from ..models import DEFAULT_BASE

    if adapter is None:
        return DEFAULT_BASE
    from ..io.card import recorded_base

    rec = recorded_base(adapter)
    if rec:
        print(f"[eval] base model: {rec} (recorded by the adapter {adapter}; --base to choose another)",
              file=sys.stderr, flush=True)
        return rec
    print(f"[eval] base model: {DEFAULT_BASE} (the adapter {adapter} records none)", file=sys.stderr, flush=True)
    return DEFAULT_BASE


def pick_backend(backend: str, device: str) -> str:
    """``hf`` or ``vllm`` for a ``backend`` option: ``auto`` is vllm when the ``vllm`` package is
    installed and the device is CUDA, else hf."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None else "hf"


def build_generator(base: str, adapter: Any, opts: dict[str, Any]):
    """The backend for ``opts['backend']``: ``(generator, tokenizer, model_info)``."""
    from ..devices import eval_bf16, resolve_device

    device = resolve_device(opts["device"])
    backend = pick_backend(opts["backend"], device)
    if backend == "vllm":
        from ..models import load_tokenizer, resolve_base
        from .vllm_backend import VLLMGenerator
        if adapter is not None and adapter_kind(adapter) == "moe":
            raise ConfigError(f"{adapter}: vLLM cannot serve an MoE folder; use --backend hf")
        tok = load_tokenizer(base)
        gen = VLLMGenerator(resolve_base(base), tok, str(adapter) if adapter else None)
        info = {"base": base, "base_path": resolve_base(base), "adapter": str(adapter) if adapter else None,
                "adapter_kind": "lora" if adapter else None, "backend": "vllm", "device": device}
        return gen, tok, info
    from .generate import HFGenerator

    model, tok, info = load_eval_model(base, adapter, merge_lora=opts["merge_lora"], device=device)
    bf16 = opts["bf16"] if opts["bf16"] is not None else eval_bf16(opts["precision"])
    gen = HFGenerator(model, tok, batch_size=opts["batch_size"], prefix_cache=opts["prefix_cache"], bf16=bf16)
    info = {**info, "backend": "hf", "device": device, "bf16_autocast": gen.bf16}
    return gen, tok, info
