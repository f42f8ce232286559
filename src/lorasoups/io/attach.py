"""Attaching an adapter file to a model so that nothing is dropped in silence (issue #13, item 6).

A tensor name that misses, doubles or lacks a prefix must never be skipped quietly (PEFT loads
such a file with ``strict=False`` and one evaluates the base model under the adapter's name).
Every load path (eval, CAT, MoE, LoRA Hub, merge, inspect) maps the file's module paths onto the
model's modules with :func:`align_record` and refuses what does not match; the PEFT path also
checks the loaded model with :func:`verify_peft_model`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import AdapterError
from ..types import AdapterRecord, LoraFactors
from .adapters import PREFIX, _natural_key, read_adapter, resolve_scale, strip_prefix

_LAYER_ROOT_RE = re.compile(r"^(?:layers|h|blocks|layer)\.\d+\.")


def model_linear_modules(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Linear modules of a Hugging Face model: module path -> ΔW shape (d_out, d_in).

    ``torch.nn.Linear`` and transformers' ``Conv1D`` (GPT-2; weight stored (d_in, d_out)).
    """
    out: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[name] = (int(mod.out_features), int(mod.in_features))
        elif type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and hasattr(mod, "nx"):
            out[name] = (int(mod.nf), int(mod.nx))
    return out


def base_linear_modules(base: str | None) -> tuple[dict[str, tuple[int, int]], str] | None:
    """(linear modules, ``base_model_prefix``) of a base model built on the meta device from its
    ``config.json`` alone (no weights read), or None when ``base`` is not available locally
    (a hub id, an embedded model not prepared yet, a missing folder, an unknown architecture).
    """
    if not base:
        return None
    from ..models import embedded_name_of, embedded_path

    emb = embedded_name_of(base)
    if emb is not None and (base == emb or not Path(base).expanduser().exists()):
        folder = embedded_path(emb)
        if not (folder / ".lorasoups-complete").is_file():
            return None
    else:
        folder = Path(base).expanduser()
    if not (folder / "config.json").is_file():
        return None
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - any failure means "not available"; callers fall back
        return None
    return model_linear_modules(model), str(getattr(model, "base_model_prefix", "") or "")


def _shown(keys: list[str], n: int = 6) -> str:
    return ", ".join(repr(k) for k in keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def match_modules(modules: list[str], targets: Mapping[str, tuple[int, int]], prefix: str, where: str,
                  keys: Mapping[str, tuple[str, str]] | None = None) -> dict[str, str]:
    """Map module paths read from an adapter file onto the model's module paths.

    Known variants: PEFT's ``base_model.model.`` prefix missing or repeated (already removed by
    :func:`strip_prefix`), and the inner model's prefix (``base_model_prefix``, ``model`` for Llama)
    missing or doubled. Tried in order: the path itself, ``prefix.path``, the path without one
    leading ``prefix.``.

    Args:
        modules: module paths from the file (after :func:`strip_prefix`).
        targets: the model's linear modules (:func:`model_linear_modules`).
        prefix: the model's ``base_model_prefix`` ('' for none).
        where: the adapter, for messages.
        keys: module -> (lora_A key, lora_B key) as in the file, for messages.

    Returns:
        file module path -> model module path.

    Raises:
        AdapterError: naming the tensor keys that match no module of the model, or two file
            modules that land on the same model module.
    """
    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    for m in modules:
        cands = [m]
        if prefix:
            cands.append(f"{prefix}.{m}")
            if m.startswith(prefix + "."):
                cands.append(m[len(prefix) + 1:])
        hit = next((c for c in cands if c in targets), None)
        if hit is None:
            unmatched.append(m)
        else:
            mapping[m] = hit
    if unmatched:
        shown = [k for m in unmatched for k in ((keys or {}).get(m) or (f"{PREFIX}{m}.lora_A.weight",))]
        example = next(iter(sorted(targets)), "?")
        raise AdapterError(f"{where}: {len(unmatched)} of {len(modules)} modules match no linear module of the "
                           f"base model; unmatched tensor keys: {_shown(shown)}. Expected keys like "
                           f"{PREFIX}{example}.lora_A.weight; refusing to use the adapter without them")
    seen: dict[str, str] = {}
    for m, t in mapping.items():
        if t in seen:
            raise AdapterError(f"{where}: modules {seen[t]!r} and {m!r} of the file both map to module {t} of the "
                               "base model (the same tensors under two key spellings)")
        seen[t] = m
    return mapping


def configured_modules(config: Mapping[str, Any], targets: Mapping[str, tuple[int, int]]) -> set[str] | None:
    """The model modules the adapter config targets, as PEFT decides it (``target_modules`` as
    names, suffixes or a regex, ``layers_to_transform``/``layers_pattern``, ``exclude_modules``), or
    None when the config names no ``target_modules`` (records built in code).

    Raises:
        AdapterError: PEFT cannot read the config.
    """
    tm = config.get("target_modules")
    if not tm:
        return None
    if tm == "all-linear":
        return {m for m in targets if m.rsplit(".", 1)[-1] not in ("lm_head", "embed_out", "output")}
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    fields = set(LoraConfig.__dataclass_fields__)
    try:
        lc = LoraConfig(**{k: v for k, v in config.items() if k in fields and k != "peft_type"})
    except (TypeError, ValueError) as e:
        raise AdapterError(f"PEFT cannot read this adapter config: {e}") from None
    return {m for m in targets if bool(check_target_module_exists(lc, m))}


def align_names(shapes: Mapping[str, tuple[int, int, int]], config: Mapping[str, Any],
                targets: Mapping[str, tuple[int, int]], prefix: str, where: str,
                keys: Mapping[str, tuple[str, str]] | None = None) -> dict[str, tuple[str, float]]:
    """Check an adapter's modules against a model and give each its model path and scale.

    Checks: every tensor finds a linear module (:func:`match_modules`), its ΔW shape (d_out, d_in)
    equals that module's, the rank the config gives under the model's name (``rank_pattern``)
    equals the tensors' rank, and the config targets exactly the modules that have tensors (no
    module configured without tensors, no tensors for a module the config does not target).

    Args:
        shapes: file module path -> (r, d_out, d_in).
        config: the adapter config (empty: built in code; rank and coverage checks skipped).

    Returns:
        file module path -> (model module path, scale resolved under that path; NaN without config).

    Raises:
        AdapterError: any check fails; the message names the adapter and the keys/modules.
    """
    mapping = match_modules(list(shapes), targets, prefix, where, keys)
    out: dict[str, tuple[str, float]] = {}
    for m, (r_t, d_out, d_in) in shapes.items():
        t = mapping[m]
        if (d_out, d_in) != targets[t]:
            raise AdapterError(f"{where}: module {t}: ΔW shape (d_out, d_in) {(d_out, d_in)} differs from the "
                               f"base model's {targets[t]} (adapter trained on another model?)")
        scale = float("nan")
        if config:
            r, _a, scale = resolve_scale(config, t)
            if r != r_t:
                raise AdapterError(f"{where}: module {t}: the config gives rank {r} under the model's module name "
                                   f"but the tensors have rank {r_t}")
        out[m] = (t, scale)
    configured = configured_modules(config, targets) if config else None
    if configured is not None:
        have = {t for t, _s in out.values()}
        no_tensors = sorted(configured - have, key=_natural_key)
        untargeted = sorted(have - configured, key=_natural_key)
        if no_tensors or untargeted:
            parts = []
            if no_tensors:
                parts.append(f"{len(no_tensors)} module(s) the config targets have no tensors ({_shown(no_tensors)}; "
                             "PEFT would give them a LoRA layer with zero B and random A)")
            if untargeted:
                parts.append(f"{len(untargeted)} module(s) with tensors are not targeted by the config "
                             f"({_shown(untargeted)}; PEFT would drop their tensors)")
            raise AdapterError(f"{where}: adapter_config.json does not describe the tensors: " + "; ".join(parts))
    return out


def align_record(record: AdapterRecord, targets: Mapping[str, tuple[int, int]], prefix: str = "",
                 where: str | None = None) -> AdapterRecord:
    """``record`` with its modules renamed to the model's paths, after the checks of
    :func:`align_names` (scales resolved again under the model's names).

    Returns:
        a new AdapterRecord sharing the tensors; ``tensor_keys`` keeps the file's key names.

    Raises:
        AdapterError: any check fails; the message names the adapter and the keys/modules.
    """
    where = where or str(record.source or record.name)
    keys = record.tensor_keys or {}
    shapes = {m: (f.r, f.d_out, f.d_in) for m, f in record.modules.items()}
    names = align_names(shapes, record.config, targets, prefix, where, keys)
    modules = {t: LoraFactors(A=record.modules[m].A, B=record.modules[m].B,
                              scale=record.modules[m].scale if s != s else s)  # NaN: keep (no config)
               for m, (t, s) in names.items()}
    return AdapterRecord(modules=modules, base_model=record.base_model, config=record.config, source=record.source,
                         name=record.name, tensor_keys={names[m][0]: k for m, k in keys.items()})


def align_to_model(record: AdapterRecord, model: torch.nn.Module, where: str | None = None) -> AdapterRecord:
    """:func:`align_record` against a loaded (unwrapped) Hugging Face model."""
    return align_record(record, model_linear_modules(model), str(getattr(model, "base_model_prefix", "") or ""), where)


def names_lacking_prefix(modules: list[str]) -> list[str]:
    """The check possible without the base model: module paths that start at a decoder layer
    (``layers.0.``) lack the model's own prefix (every causal LM keeps its layers in a sub-module;
    PEFT would match none of them). Returns those paths."""
    return [m for m in modules if _LAYER_ROOT_RE.match(m)]


def is_canonical(record: AdapterRecord, aligned: AdapterRecord) -> bool:
    """True when every tensor key of ``record`` is PEFT's own spelling for ``aligned``'s module path
    (``base_model.model.<path>.lora_A.weight``), i.e. vanilla PEFT loads the file as it is."""
    if not record.tensor_keys or len(aligned.tensor_keys) != len(aligned.modules):
        return False
    return all(k == (f"{PREFIX}{m}.lora_A.weight", f"{PREFIX}{m}.lora_B.weight") for m, k in aligned.tensor_keys.items())


def verify_peft_model(peft_model: torch.nn.Module, record: AdapterRecord, adapter_name: str = "default",
                      where: str | None = None) -> None:
    """Post-load check of a PEFT model: every module of ``record`` (model paths, see
    :func:`align_record`) has a LoRA layer holding exactly its lora_A / lora_B with its scale, and
    no other module has a LoRA layer for ``adapter_name``.

    Raises:
        AdapterError: naming the modules without a LoRA layer, LoRA layers without tensors, or
            loaded values that differ from the file.
    """
    from peft.tuners.lora import LoraLayer

    where = where or str(record.source or record.name)
    layers = {strip_prefix(n): mod for n, mod in peft_model.named_modules()
              if isinstance(mod, LoraLayer) and adapter_name in getattr(mod, "lora_A", {})}
    missing = sorted(set(record.modules) - set(layers), key=_natural_key)
    extra = sorted(set(layers) - set(record.modules), key=_natural_key)
    if missing or extra:
        raise AdapterError(f"{where}: after loading with PEFT, {len(missing)} module(s) with tensors have no LoRA layer "
                           f"({_shown(missing)}) and {len(extra)} LoRA layer(s) got no tensors ({_shown(extra)})")
    bad = []
    for m, f in record.modules.items():
        mod = layers[m]
        A = mod.lora_A[adapter_name].weight.detach()
        B = mod.lora_B[adapter_name].weight.detach()
        s = float(mod.scaling[adapter_name])
        if (A.shape != f.A.shape or B.shape != f.B.shape or not torch.equal(A.cpu(), f.A.to(A.dtype).cpu())
                or not torch.equal(B.cpu(), f.B.to(B.dtype).cpu()) or not math.isclose(s, f.scale, rel_tol=1e-6)):
            bad.append(m)
    if bad:
        raise AdapterError(f"{where}: PEFT loaded different lora_A/lora_B/scaling than the file holds for "
                           f"{_shown(sorted(bad, key=_natural_key))}")


def load_peft_adapter(model: torch.nn.Module, adapter: str | os.PathLike, allow_pickle: bool = False):
    """Load a PEFT LoRA folder onto ``model`` so that every tensor is attached, or refuse.

    Canonical files are loaded with vanilla ``PeftModel.from_pretrained``; files with a known key
    variant (see :func:`match_modules`) get the same LoRA layers from the config and their tensors
    under the model's names (``set_peft_model_state_dict``). Either way :func:`verify_peft_model`
    checks the result.

    Returns:
        (PeftModel, aligned AdapterRecord, number of modules whose keys were re-mapped).

    Raises:
        AdapterError: unreadable adapter, unmatched keys, config/tensors mismatch, or a failed
            post-load check; the message names the folder and keys.
    """
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    record = read_adapter(adapter, allow_pickle=allow_pickle)
    aligned = align_to_model(record, model, where=str(adapter))
    try:
        if is_canonical(record, aligned) and not allow_pickle:
            pm = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
            remapped = 0
        else:
            fields = set(LoraConfig.__dataclass_fields__)
            lc = LoraConfig(**{k: v for k, v in record.config.items() if k in fields and k != "peft_type"})
            lc.inference_mode = True
            pm = PeftModel(model, lc)
            sd = {}
            for m, f in aligned.modules.items():
                sd[f"{PREFIX}{m}.lora_A.weight"] = f.A
                sd[f"{PREFIX}{m}.lora_B.weight"] = f.B
            res = set_peft_model_state_dict(pm, sd)
            if res.unexpected_keys:
                raise AdapterError(f"{adapter}: PEFT did not take tensors {_shown(list(res.unexpected_keys))}")
            remapped = sum(1 for m, k in aligned.tensor_keys.items() if k[0] != f"{PREFIX}{m}.lora_A.weight")
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        sizes = [ln for ln in lines if "size mismatch" in ln]
        what = (f"{len(sizes)} size mismatch(es), first: {sizes[0][:300]}" if sizes else (lines or ["?"])[0][:300])
        raise AdapterError(f"{adapter}: PEFT could not load this adapter: {what}") from None
    pm.eval()
    verify_peft_model(pm, aligned, where=str(adapter))
    return pm, aligned, remapped


def name_checks(record: AdapterRecord, base: str | None = None) -> dict[str, Any]:
    """Checks for ``lorasoups inspect``: do the tensors attach to the base model?

    Uses ``base`` or the adapter's ``base_model_name_or_path`` when available locally
    (:func:`base_linear_modules`); otherwise only :func:`names_lacking_prefix`.

    Returns:
        ``{"tensors attach to base model": True/False or a note, "problems": [messages]}``; a
        non-empty ``problems`` list means evaluation would refuse this adapter.
    """
    ref = base or record.base_model
    found = base_linear_modules(ref)
    key = "tensors attach to base model"
    if found is None:
        bad = names_lacking_prefix(list(record.modules))
        if bad:
            return {key: False, "problems": [f"module paths {_shown(bad)} start at a decoder layer and lack the "
                                             "model's prefix (PEFT would attach none of them)"]}
        return {key: f"WARN not checked ({ref!r} not available locally; pass --base)", "problems": []}
    targets, prefix = found
    try:
        aligned = align_record(record, targets, prefix)
    except AdapterError as e:
        return {key: False, "problems": [str(e)]}
    remapped = sum(1 for m in record.modules if m not in aligned.modules)
    if not is_canonical(record, aligned):
        n = len(aligned.modules)
        how = f"lorasoups renames {remapped} module paths" if remapped else "lorasoups maps the tensor keys"
        return {key: f"WARN all {n} modules attach to {ref}, but the keys are not PEFT's own spelling "
                     f"({how}); vanilla PEFT would drop them",
                "problems": []}
    return {key: True, "problems": []}
