"""``merge --full``: base model + merged ΔW written as a full HF model folder, one safetensors shard
at a time (peak memory: one shard plus one module's ΔW)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import AdapterError, ModelError


def base_weight_files(base_path: Path) -> list[str]:
    index = base_path / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return sorted(set(wm.values()))
    if (base_path / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise ModelError(f"{base_path}: --full needs a local model folder with safetensors weights "
                     "(model.safetensors or model.safetensors.index.json)")


def check_base_shapes(base_path: Path, files: list[str], shapes: Mapping[str, tuple[int, int]]) -> None:
    from safetensors import safe_open

    found: dict[str, list[int]] = {}
    for fn in files:
        with safe_open(str(base_path / fn), framework="pt") as fh:
            for k in fh.keys():
                if k.endswith(".weight") and k[: -len(".weight")] in shapes:
                    found[k[: -len(".weight")]] = list(fh.get_slice(k).get_shape())
    for m, (d_out, d_in) in shapes.items():
        if m not in found:
            raise AdapterError(f"module {m} (from the adapters) has no weight {m}.weight in base model {base_path}")
        if tuple(found[m]) != (d_out, d_in):
            raise AdapterError(f"module {m}: adapters' ΔW shape {(d_out, d_in)} differs from the base weight "
                               f"shape {tuple(found[m])} in {base_path}")


def write_full(tmp: Path, base_path: Path, files: list[str], dense: Callable[[str], torch.Tensor],
                modules: set[str]) -> None:
    """Write base + ΔW shard by shard into ``tmp``; copy config/tokenizer files."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for fn in files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(base_path / fn), framework="pt") as fh:
            meta = fh.metadata() or {}
            for k in fh.keys():
                t = fh.get_tensor(k)
                m = k[: -len(".weight")] if k.endswith(".weight") else None
                if m in modules:
                    t = (t.float() + dense(m)).to(t.dtype)
                tensors[k] = t
        meta.setdefault("format", "pt")
        save_file(tensors, str(tmp / fn), metadata=meta)
        del tensors
    for f in sorted(base_path.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in files \
                and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")):
            shutil.copy2(f, tmp / f.name)
