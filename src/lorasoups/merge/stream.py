"""Streaming adapter reader and safetensors writer for the merge driver.

Reading: :func:`open_adapter` parses only the config and the safetensors header (names, shapes,
dtypes), applying the same checks as :func:`lorasoups.io.adapters.read_adapter`; one module's
``lora_A``/``lora_B`` are then read on demand with :meth:`AdapterStream.read`, opening the file for
that read only (so no memory map stays resident while other modules are merged).

Writing: :class:`SafetensorsStreamWriter` appends each tensor's bytes to a spill file as soon as it
is computed and writes the header at the end, so the peak memory of writing an adapter does not
grow with the number of modules (``safetensors.torch.save_file`` needs every tensor in memory at
once). The file follows the safetensors format: 8-byte little-endian header length, a JSON header
``{name: {dtype, shape, data_offsets}}`` padded to 8 bytes, then the data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterError
from ..io.adapters import (CONFIG_NAME, PICKLE_NAME, WEIGHTS_NAME, _check_config, _load_config, parse_tensor_key,
                           read_adapter, resolve_scale)
from ..types import LoraFactors

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_DTYPE_CODES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass
class ModuleEntry:
    """Header-level description of one adapted module."""

    key_a: str
    key_b: str
    r: int
    d_in: int
    d_out: int
    scale: float


@dataclass
class AdapterStream:
    """An adapter whose modules are read one at a time.

    Attributes:
        path: the adapter folder.
        config: its ``adapter_config.json``.
        modules: module path -> :class:`ModuleEntry` (shapes and resolved scale).
        weights_path: the safetensors file (None when the adapter was loaded in memory).
        memory: fully loaded factors (only for pickled ``adapter_model.bin`` with ``allow_pickle``).
    """

    path: Path
    config: dict[str, Any]
    modules: dict[str, ModuleEntry]
    weights_path: Path | None = None
    memory: dict[str, LoraFactors] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def read(self, module: str) -> LoraFactors | None:
        """Factors of ``module`` in their stored dtype (None if this adapter lacks it).

        Raises:
            AdapterError: unreadable file or NaN/inf values (message names file and module).
        """
        e = self.modules.get(module)
        if e is None:
            return None
        if self.memory is not None:
            return self.memory[module]
        from safetensors import safe_open

        try:
            with safe_open(str(self.weights_path), framework="pt") as fh:
                A, B = fh.get_tensor(e.key_a), fh.get_tensor(e.key_b)
        except Exception as ex:  # noqa: BLE001 - safetensors raises its own error types
            raise AdapterError(f"{self.weights_path}: cannot read module {module}: {ex}") from None
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise AdapterError(f"{self.weights_path}: module {module} has NaN or inf values")
        return LoraFactors(A=A, B=B, scale=e.scale)


def open_adapter(path: str | os.PathLike, allow_pickle: bool = False) -> AdapterStream:
    """Open a PEFT LoRA folder for streaming: config and header checks, no tensor data read.

    The checks match :func:`lorasoups.io.adapters.read_adapter` (unsupported variants, unexpected
    tensors, missing ``lora_A``/``lora_B``, shapes vs. the configured rank); NaN/inf values are
    checked per module when read.

    Raises:
        AdapterError: any problem, naming the file and module.
    """
    folder = Path(path)
    cfg = _load_config(folder)
    cfg_path = folder / CONFIG_NAME
    _check_config(cfg, cfg_path)
    wpath = folder / WEIGHTS_NAME
    if not wpath.is_file():
        if (folder / PICKLE_NAME).is_file() and allow_pickle:
            rec = read_adapter(folder, allow_pickle=True)
            mods = {m: ModuleEntry("", "", f.r, f.d_in, f.d_out, f.scale) for m, f in rec.modules.items()}
            return AdapterStream(folder, cfg, mods, None, rec.modules)
        read_adapter(folder)  # raises the matching AdapterError (missing weights, or pickle refused)
        raise AdapterError(f"{wpath}: missing adapter weights")
    from safetensors import safe_open

    shapes: dict[str, tuple[list[int], str]] = {}
    try:
        with safe_open(str(wpath), framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                shapes[key] = (list(sl.get_shape()), str(sl.get_dtype()))
    except Exception as ex:  # noqa: BLE001
        raise AdapterError(f"{wpath}: unreadable safetensors weights: {ex}") from None
    parts: dict[str, dict[str, tuple[str, list[int], str]]] = {}
    for key, (shape, dt) in shapes.items():
        module, kind = parse_tensor_key(wpath, key)
        if dt not in _FLOAT_DTYPES:
            raise AdapterError(f"{wpath}: tensor {key!r} has non-float dtype {dt}")
        parts.setdefault(module, {})[kind] = (key, shape, dt)
    if not parts:
        raise AdapterError(f"{wpath}: no LoRA tensors found")
    modules: dict[str, ModuleEntry] = {}
    for module in sorted(parts):
        p = parts[module]
        if "lora_A" not in p or "lora_B" not in p:
            missing = "lora_A" if "lora_A" not in p else "lora_B"
            raise AdapterError(f"{wpath}: module {module} has no {missing} weight")
        (ka, sa, _), (kb, sb, _) = p["lora_A"], p["lora_B"]
        if len(sa) != 2 or len(sb) != 2:
            raise AdapterError(f"{wpath}: module {module}: only 2-D (linear) LoRA is supported, got "
                               f"lora_A {tuple(sa)}, lora_B {tuple(sb)}")
        r, _alpha, scale = resolve_scale(cfg, module)
        if sa[0] != r or sb[1] != r:
            raise AdapterError(f"{wpath}: module {module}: tensor shapes lora_A {tuple(sa)}, lora_B "
                               f"{tuple(sb)} disagree with the config's rank r={r} ({cfg_path})")
        modules[module] = ModuleEntry(ka, kb, r, sa[1], sb[0], scale)
    return AdapterStream(folder, cfg, modules, wpath)


class SafetensorsStreamWriter:
    """Write a safetensors file tensor by tensor with memory independent of the file size.

    Usage: ``w = SafetensorsStreamWriter(path); w.add(name, t) ...; w.close(metadata)``. Until
    :meth:`close` the data lives in ``<path>.spill``; :meth:`close` writes the header and copies the
    data after it, then removes the spill file. Use inside an atomic output folder.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._spill_path = self.path.with_name(self.path.name + ".spill")
        self._spill = open(self._spill_path, "wb")
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (float64/32/16 or bfloat16, any shape) under ``name``."""
        if name in self._entries:
            raise ValueError(f"duplicate tensor name {name!r}")
        if tensor.dtype not in _DTYPE_CODES:
            raise ValueError(f"unsupported dtype {tensor.dtype} for {name!r}")
        t = tensor.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()  # little-endian bytes (x86 / ARM)
        self._spill.write(memoryview(raw))
        n = int(raw.nbytes)
        self._entries[name] = {"dtype": _DTYPE_CODES[t.dtype], "shape": list(t.shape),
                               "data_offsets": [self._offset, self._offset + n]}
        self._offset += n

    def close(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the final file (header + data) and remove the spill file."""
        self._spill.close()
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        header.update(self._entries)
        hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
        hb += b" " * (math.ceil(len(hb) / 8) * 8 - len(hb))
        with open(self.path, "wb") as out, open(self._spill_path, "rb") as data:
            out.write(struct.pack("<Q", len(hb)))
            out.write(hb)
            shutil.copyfileobj(data, out, length=16 << 20)
        self._spill_path.unlink()
        return self.path

    def abort(self) -> None:
        """Close and delete the spill file (on errors)."""
        self._spill.close()
        self._spill_path.unlink(missing_ok=True)


def pad_adapter_file(src: Path, dst: Path, r: int, key_kinds: dict[str, str]) -> None:
    """Copy the safetensors file ``src`` to ``dst`` with every LoRA tensor zero-padded to rank ``r``
    (lora_A (r_m, d_in) gets zero rows, lora_B (d_out, r_m) zero columns), one tensor in memory at
    a time. B·A is unchanged (see :func:`lorasoups.io.adapters.pad_rank`).

    Args:
        key_kinds: tensor name -> ``lora_A`` or ``lora_B`` for every tensor of ``src``.
    """
    from safetensors import safe_open

    writer = SafetensorsStreamWriter(dst)
    try:
        with safe_open(str(src), framework="pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                if key_kinds[key] == "lora_A" and t.shape[0] < r:
                    t = torch.cat([t, t.new_zeros(r - t.shape[0], t.shape[1])], dim=0)
                elif key_kinds[key] == "lora_B" and t.shape[1] < r:
                    t = torch.cat([t, t.new_zeros(t.shape[0], r - t.shape[1])], dim=1)
                writer.add(key, t)
        writer.close({"format": "pt"})
    except BaseException:
        writer.abort()
        raise
