"""The MoE folder format: routers plus checksummed references to the expert adapter folders.

A mixture of LoRA experts is not a LoRA: its update Σ_i g_i(x) s_i B_i A_i x depends on each
token's gates g(x), so no fixed low-rank ΔW exists and it cannot be written as a PEFT adapter.
It is saved as a folder with

* ``moe_config.json`` — ``format`` = ``"lorasoups-moe"``, ``format_version`` = 1, ``base_model``,
  ``experts`` (in router order: ``name``, absolute ``path``, ``relpath`` relative to this folder,
  ``sha256`` of each adapter file), ``top_k``, ``router_layers``, ``modules`` (every wrapped
  module), ``routed_modules`` (those with a router; the others mix experts uniformly, 1/n),
  ``unrouted_mixing``, ``router`` (what the routers read and compute), ``training`` (options and
  losses) and ``provenance`` (git commit, package versions, time);
* ``routers.safetensors`` — one fp32 tensor ``<module path>.router.weight`` of shape
  (n_experts, d_in) per routed module (logits = weight @ x, no bias);
* ``train_log.jsonl`` — one line per training step.

Expert folders are not copied; on load each is found by its absolute path, else by its path
relative to the MoE folder, and its files must match the recorded SHA-256 checksums.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import AdapterError, ConfigError
from ..provenance import sha256_file

MOE_CONFIG = "moe_config.json"
ROUTERS_FILE = "routers.safetensors"
TRAIN_LOG = "train_log.jsonl"
FORMAT = "lorasoups-moe"
FORMAT_VERSION = 1
_EXPERT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def expert_checksums(folder: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of a PEFT adapter folder's config and weight files (file name -> digest).

    Raises:
        AdapterError: the folder has no adapter files.
    """
    folder = Path(folder)
    out = {name: sha256_file(folder / name) for name in _EXPERT_FILES if (folder / name).is_file()}
    if "adapter_config.json" not in out:
        raise AdapterError(f"{folder}: not a PEFT adapter folder (no adapter_config.json)")
    return out


def is_moe_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a lorasoups MoE ``moe_config.json``."""
    p = Path(path) / MOE_CONFIG
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == FORMAT


def read_moe_config(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``moe_config.json``.

    Raises:
        ConfigError: missing/unreadable file, wrong format or version, missing keys.
    """
    p = Path(folder) / MOE_CONFIG
    if not p.is_file():
        raise ConfigError(f"{folder}: not a mixture-of-experts folder (no {MOE_CONFIG})")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: unreadable MoE config: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ConfigError(f"{p}: format is {cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FORMAT!r}")
    if int(cfg.get("format_version", -1)) != FORMAT_VERSION:
        raise ConfigError(f"{p}: format_version {cfg.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    missing = [k for k in ("experts", "top_k", "modules", "routed_modules") if k not in cfg]
    if missing:
        raise ConfigError(f"{p}: missing keys {missing}")
    if not cfg["experts"]:
        raise ConfigError(f"{p}: no experts listed")
    return cfg


def resolve_experts(folder: str | os.PathLike, cfg: Mapping[str, Any], verify: bool = True) -> list[Path]:
    """Expert adapter folders of an MoE folder, checked against their recorded checksums.

    Each expert is looked up at its absolute ``path``, else at ``relpath`` relative to ``folder``.

    Raises:
        AdapterError: an expert folder is missing, or a file's SHA-256 differs from the recorded one
            (the expert changed since the routers were trained).
    """
    folder = Path(folder)
    out = []
    for e in cfg["experts"]:
        cands = [Path(e["path"])] if e.get("path") else []
        if e.get("relpath"):
            cands.append((folder / e["relpath"]).resolve())
        path = next((c for c in cands if (c / "adapter_config.json").is_file()), None)
        if path is None:
            raise AdapterError(f"{folder / MOE_CONFIG}: expert {e.get('name')!r} not found at "
                               + " or ".join(str(c) for c in cands))
        if verify:
            recorded = e.get("sha256") or {}
            if not recorded:
                raise AdapterError(f"{folder / MOE_CONFIG}: expert {e.get('name')!r} has no recorded checksums")
            for name, digest in recorded.items():
                f = path / name
                if not f.is_file():
                    raise AdapterError(f"{f}: expert file listed in {folder / MOE_CONFIG} is missing")
                actual = sha256_file(f)
                if actual != digest:
                    raise AdapterError(f"{f}: SHA-256 {actual[:12]}… differs from {digest[:12]}… recorded in "
                                       f"{folder / MOE_CONFIG}; the expert changed after the routers were trained")
        out.append(path)
    return out


def expert_entries(paths: Sequence[str | Path], names: Sequence[str], out: str | Path) -> list[dict[str, Any]]:
    """The ``experts`` list of ``moe_config.json`` for expert folders written under ``out``."""
    out_abs = Path(out).resolve()
    entries = []
    for p, nm in zip(paths, names):
        pa = Path(p).resolve()
        entries.append({"name": nm, "path": str(pa), "relpath": os.path.relpath(pa, out_abs),
                        "sha256": expert_checksums(pa)})
    return entries


def write_moe_files(tmp: Path, config: Mapping[str, Any], routers: Mapping[str, torch.Tensor],
                    log_lines: Sequence[Mapping[str, Any]] = ()) -> None:
    """Write ``moe_config.json``, ``routers.safetensors`` and ``train_log.jsonl`` into ``tmp``
    (use inside :func:`lorasoups.paths.atomic_dir`)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in routers.items()}, str(tmp / ROUTERS_FILE), metadata={"format": "pt"})
    (tmp / MOE_CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n", encoding="utf-8")
    if log_lines:
        (tmp / TRAIN_LOG).write_text("".join(json.dumps(dict(x)) + "\n" for x in log_lines), encoding="utf-8")


def save_moe_folder(out: str | os.PathLike, layers: Mapping[str, Any], experts: Sequence[str | os.PathLike],
                    names: Sequence[str] | None = None, *, base_model: str | None, top_k: int,
                    router_layers: Any = "all", training: Mapping[str, Any] | None = None,
                    log: Sequence[Mapping[str, Any]] = (), extra: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Atomically write an MoE folder for wrapped ``layers`` (from ``attach_moe``).

    Args:
        layers: module path -> :class:`~lorasoups.moe.layer.MoeLoraLinear`.
        experts: the expert adapter folders in router order (checksummed now).
        names: display names (default: folder names).
        base_model: the base-model argument recorded in the config.
        top_k: experts per token; router_layers: as given (recorded).
        training: options, losses, timings (recorded under ``training``).
        log: per-step training records (``train_log.jsonl``).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        AdapterError: an expert folder has no adapter files.
    """
    from ..paths import atomic_dir
    from ..provenance import provenance
    from .layer import gate_mode
    from .model import router_state

    names = list(names) if names is not None else [Path(e).name for e in experts]
    n = len(experts)
    modules = sorted(layers)
    routed = sorted(m for m, w in layers.items() if w.router is not None)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        cfg = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "description": "Mixture of LoRA experts (lorasoups): frozen PEFT LoRA experts mixed per token by "
                           "top-k routers. Not a PEFT adapter; load with lorasoups.moe.load_moe_model.",
            "base_model": _canonical(base_model),
            "experts": expert_entries(experts, names, out),
            "top_k": min(int(top_k), n),
            "router_layers": router_layers,
            "modules": modules,
            "routed_modules": routed,
            "unrouted_mixing": "uniform",
            "router": {"input": "the wrapped module's own input x (d_in)", "bias": False, "dtype": "float32",
                       "gating": ("softmax over the top-k logits (others 0)" if gate_mode(top_k) == "renormalized"
                                  else "top-1: the chosen expert's full-softmax probability (Switch)"),
                       "gate_mode": gate_mode(top_k), "file": ROUTERS_FILE,
                       "key": "<module path>.router.weight", "shape": "(n_experts, d_in)",
                       "missing_module": "an expert without the module contributes ΔW = 0 there"},
            "training": dict(training or {}),
            "provenance": provenance(),
        }
        cfg.update(extra or {})
        write_moe_files(tmp, cfg, router_state(dict(layers)), log)
        from ..io.card import write_model_card

        tr = dict(training or {})
        write_model_card(tmp, base_model=base_model, method="moe",
                         description=f"Mixture of {n} LoRA experts, top-{cfg['top_k']} per-token routers",
                         adapters=names, data=tr.get("data_checksums") or (),
                         metrics={k: tr[k] for k in ("val_loss_before", "val_loss_after", "first_loss", "last_loss") if k in tr} or None)
    return Path(out)


def load_moe_model(base_model: Any, folder: str | os.PathLike, *, verify: bool = True, allow_pickle: bool = False):
    """Wrap an already loaded base model in place with a saved MoE's experts and routers.

    Args:
        base_model: a loaded causal LM (the MoE's base model), or a base-model name/path which is
            then loaded with :func:`lorasoups.models.load_base`.
        folder: an MoE folder (see the module docstring).
        verify: check the expert files' SHA-256 against ``moe_config.json`` (default on).
        allow_pickle: accept experts stored as pickled ``adapter_model.bin``.

    Returns:
        The same model object, wrapped, in eval mode, all parameters frozen.

    Raises:
        ConfigError: not an MoE folder. AdapterError: an expert is missing or changed, or it does
        not fit the base model. ModelError: a named base model cannot be loaded.
    """
    from safetensors.torch import load_file

    from ..io.adapters import read_adapter
    from .model import attach_moe

    folder = Path(folder)
    cfg = read_moe_config(folder)
    if isinstance(base_model, (str, os.PathLike)):
        from ..models import load_base

        base_model = load_base(str(base_model))[0]
    paths = resolve_experts(folder, cfg, verify=verify)
    from ..io.attach import align_to_model

    experts = [align_to_model(read_adapter(p, allow_pickle=allow_pickle), base_model) for p in paths]
    for e, entry in zip(experts, cfg["experts"]):
        e.name = entry.get("name", e.name)
    mods = sorted({m for e in experts for m in e.modules})
    if mods != sorted(cfg["modules"]):
        raise AdapterError(f"{folder / MOE_CONFIG}: the experts adapt {len(mods)} modules but the config lists "
                           f"{len(cfg['modules'])}")
    layers = attach_moe(base_model, experts, top_k=int(cfg["top_k"]), routed=list(cfg["routed_modules"]))
    rpath = folder / ROUTERS_FILE
    if not rpath.is_file():
        raise ConfigError(f"{rpath}: missing router weights")
    state = load_file(str(rpath))
    expected = {f"{m}.router.weight" for m, w in layers.items() if w.router is not None}
    if set(state) != expected:
        extra, miss = sorted(set(state) - expected), sorted(expected - set(state))
        raise ConfigError(f"{rpath}: router tensors do not match the config (missing {miss[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for m, w in layers.items():
            if w.router is None:
                continue
            t = state[f"{m}.router.weight"]
            if tuple(t.shape) != tuple(w.router.weight.shape):
                raise ConfigError(f"{rpath}: {m}.router.weight has shape {tuple(t.shape)}, expected "
                                  f"{tuple(w.router.weight.shape)} (n_experts, d_in)")
            w.router.weight.copy_(t.to(w.router.weight))
    for p in base_model.parameters():
        p.requires_grad_(False)
    base_model.eval()
    return base_model


def _canonical(base_model: str | None) -> str | None:
    from ..models import canonical_base_id

    return canonical_base_id(base_model)
