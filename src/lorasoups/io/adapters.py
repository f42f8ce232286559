"""PEFT LoRA adapter folder <-> :class:`AdapterRecord`.

This is the only module that knows PEFT's file layout and key names:
``adapter_config.json`` plus ``adapter_model.safetensors`` whose keys look like
``base_model.model.<module path>.lora_A.weight`` (r, d_in) and ``...lora_B.weight`` (d_out, r).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdapterError
from ..models import canonical_base_id
from ..paths import atomic_dir
from ..types import AdapterRecord, LoraFactors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."

_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")


def parse_tensor_key(wpath: Path, key: str) -> tuple[str, str]:
    """Module path (without the ``base_model.model.`` prefix) and kind (``lora_A`` / ``lora_B``)
    of a tensor name in a PEFT LoRA weights file.

    Raises:
        AdapterError: (naming ``wpath`` and the key) an embedding LoRA, DoRA magnitude,
            ``modules_to_save`` / trainable-token tensor, or any other tensor that is not a
            lora_A / lora_B weight: refused rather than silently dropped.
    """
    if "lora_embedding_A" in key or "lora_embedding_B" in key:
        raise AdapterError(f"{wpath}: embedding LoRA tensor {key!r} is not supported")
    if "lora_magnitude_vector" in key:
        raise AdapterError(f"{wpath}: DoRA tensor {key!r} is not supported")
    if "modules_to_save" in key or "trainable_tokens" in key:
        raise AdapterError(f"{wpath}: tensor {key!r} (modules_to_save / trainable tokens) is not supported")
    m = _KEY_RE.match(key)
    if m is None:
        raise AdapterError(f"{wpath}: unexpected tensor {key!r} (not a lora_A/lora_B weight); "
                           "refusing rather than silently dropping it")
    return strip_prefix(m.group("module")), m.group("kind")


def strip_prefix(module: str) -> str:
    """``module`` without every leading ``base_model.model.`` (PEFT's wrapper prefix, also when a
    file repeats it: ``base_model.model.base_model.model.model.layers.0...``)."""
    while module.startswith(PREFIX):
        module = module[len(PREFIX):]
    return module


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """Return the first key of ``patterns`` (``rank_pattern`` / ``alpha_pattern``) matching ``module``.

    A key matches when the module path ends with it at a ``.`` boundary, read as a regular
    expression, the way PEFT resolves these patterns.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def resolve_scale(config: Mapping[str, Any], module: str) -> tuple[int, float, float]:
    """Return (r, lora_alpha, scale) for ``module`` under an adapter ``config``.

    scale = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora`` (Kalajdzievski 2023);
    ``rank_pattern`` / ``alpha_pattern`` override r / lora_alpha per module.
    """
    r = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    rp = config.get("rank_pattern") or {}
    ap = config.get("alpha_pattern") or {}
    k = pattern_key(rp, module)
    if k is not None:
        r = int(rp[k])
    k = pattern_key(ap, module)
    if k is not None:
        alpha = float(ap[k])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, alpha, scale


def _load_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise AdapterError(f"{folder}: adapter folder does not exist")
    if not cfg_path.is_file():
        raise AdapterError(f"{cfg_path}: missing adapter config (expected a PEFT adapter folder)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{cfg_path}: unreadable adapter config: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: adapter config is not a JSON object")
    return cfg


def _check_config(cfg: dict[str, Any], cfg_path: Path) -> None:
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterError(f"{cfg_path}: unsupported peft_type {ptype!r}; only LORA adapters are supported")
    if cfg.get("use_dora"):
        raise AdapterError(f"{cfg_path}: DoRA adapters (use_dora=true) are not supported: their magnitude "
                           "vector makes the update non-linear in B·A, so they cannot be merged exactly")
    if cfg.get("lora_bias"):
        raise AdapterError(f"{cfg_path}: adapters with lora_bias=true are not supported")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{cfg_path}: modules_to_save {cfg['modules_to_save']} is not supported "
                           "(fully trained modules are not LoRA deltas); refusing rather than dropping them")
    for key in ("r", "lora_alpha"):
        if key in cfg and not isinstance(cfg[key], (int, float)):
            raise AdapterError(f"{cfg_path}: {key} must be a number, got {cfg[key]!r}")


def read_adapter(path: str | os.PathLike, allow_pickle: bool = False, device: str = "cpu") -> AdapterRecord:
    """Read a PEFT LoRA adapter folder into per-module factors with resolved scales.

    Args:
        path: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        allow_pickle: also accept a pickled ``adapter_model.bin`` (loaded with ``weights_only``).
        device: where tensors are loaded.

    Returns:
        AdapterRecord whose ``modules[m]`` has A (r, d_in), B (d_out, r) in the stored dtype and
        ``scale`` resolved once (see :func:`resolve_scale`).

    Raises:
        AdapterError: missing/unreadable config or weights, pickled weights without
            ``allow_pickle``, a tensor whose shape disagrees with the config or its partner,
            NaN/inf values, or an unsupported variant (DoRA, lora_bias, embedding LoRA,
            modules_to_save, conv LoRA, extra tensors). Every message names the file.
    """
    folder = Path(path)
    cfg = _load_config(folder)
    cfg_path = folder / CONFIG_NAME
    _check_config(cfg, cfg_path)
    wpath = folder / WEIGHTS_NAME
    if wpath.is_file():
        try:
            tensors = load_file(str(wpath), device=device)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise AdapterError(f"{wpath}: unreadable safetensors weights: {e}") from None
    elif (folder / PICKLE_NAME).is_file():
        ppath = folder / PICKLE_NAME
        if not allow_pickle:
            raise AdapterError(f"{ppath}: pickled weights are refused (they can run code when loaded); "
                               "convert to safetensors or pass --allow-pickle if you trust the file")
        try:
            tensors = torch.load(ppath, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is reported with the file
            raise AdapterError(f"{ppath}: unreadable pickled weights: {e}") from None
    else:
        raise AdapterError(f"{wpath}: missing adapter weights")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, dict[str, str]] = {}
    for key, t in tensors.items():
        module, kind = parse_tensor_key(wpath, key)
        if kind in keys.get(module, {}):
            raise AdapterError(f"{wpath}: tensors {keys[module][kind]!r} and {key!r} are both the {kind} of "
                               f"module {module}")
        parts.setdefault(module, {})[kind] = t
        keys.setdefault(module, {})[kind] = key

    if not parts:
        raise AdapterError(f"{wpath}: no LoRA tensors found")
    modules: dict[str, LoraFactors] = {}
    for module in sorted(parts):
        p = parts[module]
        if "lora_A" not in p or "lora_B" not in p:
            missing = "lora_A" if "lora_A" not in p else "lora_B"
            raise AdapterError(f"{wpath}: module {module} has no {missing} weight")
        A, B = p["lora_A"], p["lora_B"]
        if A.dim() != 2 or B.dim() != 2:
            raise AdapterError(f"{wpath}: module {module}: only 2-D (linear) LoRA is supported, got "
                               f"lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}")
        r, _alpha, scale = resolve_scale(cfg, module)
        if A.shape[0] != r or B.shape[1] != r:
            raise AdapterError(f"{wpath}: module {module}: tensor shapes lora_A {tuple(A.shape)}, lora_B "
                               f"{tuple(B.shape)} disagree with the config's rank r={r} ({cfg_path})")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise AdapterError(f"{wpath}: module {module} has NaN or inf values")
        modules[module] = LoraFactors(A=A, B=B, scale=scale)
    return AdapterRecord(modules=modules, base_model=cfg.get("base_model_name_or_path"), config=cfg,
                         source=folder, name=folder.name,
                         tensor_keys={m: (keys[m]["lora_A"], keys[m]["lora_B"]) for m in modules})


def pad_rank(f: LoraFactors, r: int) -> LoraFactors:
    """``f`` with zero rows appended to A (r, d_in) and zero columns to B (d_out, r).

    Exact: B·A (and so ΔW = scale·B·A) is unchanged, only the stored rank grows to ``r``.

    Raises:
        ValueError: ``r`` is smaller than ``f.r``.
    """
    if r < f.r:
        raise ValueError(f"cannot pad rank {f.r} down to {r}")
    if r == f.r:
        return f
    A = torch.cat([f.A, f.A.new_zeros(r - f.r, f.d_in)], dim=0)
    B = torch.cat([f.B, f.B.new_zeros(f.d_out, r - f.r)], dim=1)
    return LoraFactors(A=A, B=B, scale=f.scale)


def _natural_key(m: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m))


def build_config(modules: Mapping[str, LoraFactors], base_model: str | None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A PEFT ``adapter_config.json`` for factors whose scale is folded into B (scaling 1), all of
    one rank (pad with :func:`pad_rank` first).

    Every reader must compute the same ΔW from the written folder:

    * PEFT: scaling = lora_alpha / r per module (``rank_pattern``/``alpha_pattern`` overrides);
    * vLLM: scaling = lora_alpha / r from the *global* ``r`` and ``lora_alpha`` only (it ignores
      the patterns), tensors used as stored;
    * llama.cpp (``convert_lora_to_gguf.py``): the global ``lora_alpha`` only, and at run time
      scaling = alpha / rank where rank is read from each tensor's shape.

    All three agree only when every module has the same stored rank R and r = lora_alpha = R, so
    writers pad modules of smaller rank with zero rows/columns (exact) and this config has no
    ``rank_pattern``/``alpha_pattern``. ``target_modules`` lists the full module paths that have
    tensors (no ``layers_to_transform``/``exclude_modules``/regex), so PEFT creates a LoRA layer
    for exactly those modules and no layer is left with zero B and random A.

    Raises:
        AdapterError: modules of different ranks (not padded).
    """
    ranks = {f.r for f in modules.values()}
    if len(ranks) != 1:
        raise AdapterError(f"build_config needs one rank for all modules (pad with pad_rank), got {sorted(ranks)}")
    r = ranks.pop()
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": canonical_base_id(base_model),
        "r": r,
        "lora_alpha": r,
        "use_rslora": False,
        "use_dora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "target_modules": sorted(modules, key=_natural_key),
        "exclude_modules": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if extra:
        cfg.update(extra)
    return cfg


def save_adapter_files(folder: Path, modules: Mapping[str, LoraFactors], base_model: str | None,
                       dtype: torch.dtype = torch.float32, extra_config: Mapping[str, Any] | None = None) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into an existing folder.

    Scales are folded into B (exported scaling 1) and every module is zero-padded to the largest
    rank (:func:`pad_rank`), so PEFT, vLLM and llama.cpp read the same ΔW for any mix of ranks,
    alphas and rsLoRA (see :func:`build_config`). Not atomic on its own: use
    :func:`write_adapter`, or call it inside :func:`lorasoups.paths.atomic_dir`.
    """
    if not modules:
        raise AdapterError(f"{folder}: refusing to write an adapter with no modules")
    r = max(f.r for f in modules.values())
    tensors: dict[str, torch.Tensor] = {}
    padded: dict[str, LoraFactors] = {}
    for m, f in modules.items():
        ff = pad_rank(f.folded(), r)
        padded[m] = ff
        tensors[f"{PREFIX}{m}.lora_A.weight"] = ff.A.to(dtype).contiguous()
        tensors[f"{PREFIX}{m}.lora_B.weight"] = ff.B.to(dtype).contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = build_config(padded, base_model, extra_config)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_adapter(modules: Mapping[str, LoraFactors] | AdapterRecord, out: str | os.PathLike, *,
                  base_model: str | None = None, overwrite: bool = False, dtype: torch.dtype = torch.float32,
                  extra_files: Mapping[str, str] | None = None) -> Path:
    """Atomically write factors as a standard PEFT LoRA folder that ``PeftModel.from_pretrained``
    and vLLM load.

    Args:
        modules: module path -> factors, or an AdapterRecord (its base model is used if
            ``base_model`` is None).
        out: output folder; written through a temp folder and a rename.
        overwrite: replace an existing ``out``.
        dtype: dtype of the stored tensors (computation of the folded B is in fp32).
        extra_files: file name -> text written beside the adapter (JSON logs, notes).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        AdapterError: no modules.
    """
    if isinstance(modules, AdapterRecord):
        base_model = base_model if base_model is not None else modules.base_model
        modules = modules.modules
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_adapter_files(tmp, modules, base_model, dtype=dtype)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out)


def describe(record: AdapterRecord) -> dict[str, Any]:
    """Summary used by ``lorasoups inspect``: base model, targets, ranks, alphas, scales, counts."""
    cfg = record.config
    ranks = sorted({f.r for f in record.modules.values()})
    scales = sorted({round(f.scale, 6) for f in record.modules.values()})
    norms = [float(torch.linalg.matrix_norm(f.delta())) for f in record.modules.values()]
    layers = sorted({int(x) for m in record.modules for x in re.findall(r"\.layers\.(\d+)\.", m)})
    return {
        "path": str(record.source) if record.source else None,
        "base_model": record.base_model,
        "target_modules": record.target_modules,
        "ranks": ranks,
        "lora_alpha": cfg.get("lora_alpha"),
        "alpha_pattern": cfg.get("alpha_pattern") or {},
        "rank_pattern": cfg.get("rank_pattern") or {},
        "use_rslora": bool(cfg.get("use_rslora", False)),
        "scales": scales,
        "num_modules": len(record.modules),
        "layers": [layers[0], layers[-1]] if layers else [],
        "num_parameters": record.num_parameters(),
        "dtype": str(next(iter(record.modules.values())).A.dtype).replace("torch.", ""),
        "delta_fro_norm": {"min": min(norms), "mean": sum(norms) / len(norms), "max": max(norms)},
        "checks": {
            "all modules have lora_A and lora_B": True,
            "shapes agree with config ranks": True,
            "finite values": True,
            "zero deltas": sum(1 for n in norms if n == 0.0),
        },
    }

