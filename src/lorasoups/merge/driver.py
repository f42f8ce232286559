"""The merge driver: validate adapters, run a registered merge method module by module, write the
result as a PEFT LoRA folder (exact rank-sum, or an SVD step to rank K) or as a full HF model folder.

Streaming: only one module's factors (and, for dense methods, its n deltas) are in memory at a
time; the output adapter is written tensor by tensor (:class:`.stream.SafetensorsStreamWriter`),
and ``full=True`` rewrites the base model one safetensors shard at a time, so peak memory does not
grow with the number of layers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import AdapterError, ConfigError, LorasoupsError, ModelError
from ..methods import METHODS, MethodInfo
from ..paths import atomic_dir, check_not_input, check_writable
from ..registry import suggest
from ..types import LoraFactors
from .stream import AdapterStream, SafetensorsStreamWriter, open_adapter
from .svd import SVD_DRIVERS, truncate_delta, truncate_factors

INFO_NAME = "merge_info.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------- helpers


SVD_ERROR_WARN = 0.1  # relative Frobenius error of the SVD step above which merge warns

def merge_methods() -> dict[str, MethodInfo]:
    """Registered methods of kind ``merge`` (importing :mod:`lorasoups.merge` registers them)."""
    import lorasoups.merge  # noqa: F401

    return {n: m for n, m in METHODS.items() if m.kind == "merge"}


def get_merge_method(name: str) -> MethodInfo:
    """The registered merge method ``name``.

    Raises:
        ConfigError: unknown name (with "did you mean") or a method that is not a closed-form merge.
    """
    methods = merge_methods()
    if name not in methods:
        if name in METHODS:
            raise ConfigError(f"method {name!r} is a {METHODS.get(name).kind} method, not a closed-form merge; "
                              f"use its own command (lorasoups {name} ...). Merge methods: {', '.join(sorted(methods))}")
        raise ConfigError(f"unknown merge method {name!r}{suggest(name, list(methods))}; "
                          f"known: {', '.join(sorted(methods))}")
    return methods[name]


def _coerce(method: str, key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` (often a CLI string) to the type of ``default``."""
    where = f"method {method!r} parameter {key!r}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return f
    if isinstance(default, str):
        return str(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def resolve_params(info: MethodInfo, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Method parameters with defaults filled in and values converted to the defaults' types.

    Raises:
        ConfigError: unknown parameter (with "did you mean"), a value of the wrong type, or a
            required parameter left unset.
    """
    defaults = dict(info.params)
    out = {k: v for k, v in defaults.items()}
    for k, v in (params or {}).items():
        if k not in defaults:
            known = ", ".join(f"{p}={d}" for p, d in defaults.items()) or "none"
            raise ConfigError(f"method {info.name!r} has no parameter {k!r}{suggest(k, list(defaults))}; "
                              f"its parameters: {known}")
        out[k] = _coerce(info.name, k, v, defaults[k])
    missing = [k for k, v in out.items() if v is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"method {info.name!r}: required parameter(s) {', '.join(missing)} not set")
    return out


def parse_param_args(items: Sequence[str] | None) -> dict[str, str]:
    """``["density=0.5", "seed=3"]`` -> ``{"density": "0.5", "seed": "3"}``.

    Raises:
        ConfigError: an item without ``=`` or with an empty name.
    """
    out: dict[str, str] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--param {it!r}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def module_seed(seed: int, module: str) -> int:
    """A 63-bit seed from the user seed and the module path (independent of module order)."""
    h = hashlib.sha256(f"{int(seed)}\x00{module}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _module_sort_key(m: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", m))


def _same_base(a: str, b: str) -> bool:
    from ..models import canonical_base_id

    if a == b or canonical_base_id(a) == canonical_base_id(b):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_compatible(streams: Sequence[AdapterStream], allow_different_base: bool = False) -> tuple[str | None, list[str]]:
    """Check that adapters share the base model and module shapes; return (base model, modules).

    Modules are the union over adapters in natural order (layer 2 before layer 10).

    Raises:
        AdapterError: different ``base_model_name_or_path`` (unless ``allow_different_base``), or a
            module with different ΔW shapes (d_out, d_in) in two adapters; messages name both
            adapters, the module and the shapes.
    """
    base, base_from = None, None
    for s in streams:
        b = s.base_model
        if not b:
            continue
        if base is None:
            base, base_from = b, s
        elif not _same_base(base, b) and not allow_different_base:
            raise AdapterError(f"adapters are for different base models: {base_from.path} has {base!r}, "
                               f"{s.path} has {b!r}; pass --allow-different-base if they really share weights")
    seen: dict[str, tuple[tuple[int, int], AdapterStream]] = {}
    for s in streams:
        for m, e in s.modules.items():
            shape = (e.d_out, e.d_in)
            if m in seen and seen[m][0] != shape:
                other = seen[m][1]
                raise AdapterError(f"module {m} has ΔW shape (d_out, d_in) {seen[m][0]} in adapter {other.path} "
                                   f"but {shape} in adapter {s.path}")
            seen.setdefault(m, (shape, s))
    return base, sorted(seen, key=_module_sort_key)


def align_streams(streams: Sequence[AdapterStream], base: str | None = None) -> str:
    """Map every input's module paths onto the base model's modules, in place (issue #13 item 6).

    The base model (``base``, else the first ``base_model_name_or_path``) is built on the meta device
    from its config (:func:`lorasoups.io.attach.base_linear_modules`); known key variants (missing
    or doubled prefixes) are renamed to the model's paths and every config must target exactly its
    tensors (:func:`lorasoups.io.attach.align_names`). When no base model is available locally only
    the model-free check runs (:func:`lorasoups.io.attach.names_lacking_prefix`) and its findings
    are returned as a warning (eval and every other loader refuse unattached tensors later).

    Returns:
        a one-line summary of what was checked.

    Raises:
        AdapterError: unmatched keys (named), shape or config/tensor mismatches.
    """
    from ..io.attach import align_names, base_linear_modules, names_lacking_prefix

    ref = base or next((s.base_model for s in streams if s.base_model), None)
    found = base_linear_modules(ref)
    if found is None:
        bad = [f"{s.path}: {m}" for s in streams for m in names_lacking_prefix(list(s.modules))]
        return (f"module names not checked against the base model ({ref!r} is not available locally; "
                "pass --base FOLDER to check them)"
                + (f"; WARNING: {len(bad)} module paths start at a decoder layer and lack the model's prefix, "
                   f"e.g. {bad[0]}" if bad else ""))
    targets, prefix = found
    renamed = 0
    for s in streams:
        shapes = {m: (e.r, e.d_out, e.d_in) for m, e in s.modules.items()}
        keys = {m: (e.key_a, e.key_b) for m, e in s.modules.items() if e.key_a}
        names = align_names(shapes, s.config, targets, prefix, str(s.path), keys)
        new: dict[str, Any] = {}
        for m, e in s.modules.items():
            t, scale = names[m]
            e.scale = scale
            new[t] = e
        if s.memory is not None:
            s.memory = {names[m][0]: LoraFactors(A=f.A, B=f.B, scale=names[m][1]) for m, f in s.memory.items()}
        renamed += sum(1 for m in s.modules if names[m][0] != m)
        s.modules = new
    return (f"module names checked against base model {ref!r}: every tensor found its module"
            + (f" ({renamed} module paths mapped from a key variant)" if renamed else ""))


def resolve_weights(weights: Sequence[float] | None, n: int, default: str = "ones") -> list[float]:
    """The per-adapter weights: ``weights`` checked, or the method's default when None.

    Args:
        weights: one float per adapter, or None.
        n: number of adapters.
        default: ``ones`` (w_i = 1, a sum: task arithmetic) or ``mean`` (w_i = 1/n, the average:
            a uniform model soup, Wortsman et al. 2022), from :attr:`MethodInfo.default_weights`.

    Raises:
        ConfigError: wrong count or non-finite weights.
    """
    if weights is None:
        return [1.0 / n] * n if default == "mean" else [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ConfigError(f"got {len(w)} weights for {n} adapters; give one weight per adapter")
    if not all(math.isfinite(x) for x in w):
        raise ConfigError(f"weights must be finite, got {w}")
    return w


def merge_module(info: MethodInfo, factors: Sequence[LoraFactors | None], weights: Sequence[float],
                 params: Mapping[str, Any] | None = None, module: str = "") -> LoraFactors | torch.Tensor:
    """Run merge method ``info`` on one module's factors (the per-module step of the driver).

    Args:
        info: a registered merge method (:func:`get_merge_method`).
        factors: one entry per adapter (None = module missing, contributes zero).
        weights: one float per adapter.
        params: resolved parameters (:func:`resolve_params`); a ``seed`` is replaced by
            :func:`module_seed` (seed, ``module``), so results do not depend on module order.
        module: the module path (seeds and error messages).

    Returns:
        LoraFactors (fp32, scale 1) for ``concat``/``factors`` methods; a dense ΔW (d_out, d_in) fp32
        for ``delta`` methods.

    Raises:
        AdapterError: the method rejects the inputs (e.g. shapes), naming the module.
        ConfigError: invalid parameter values.
    """
    if len(factors) != len(weights):
        raise ConfigError(f"{info.name}: got {len(weights)} weights for {len(factors)} adapters")
    present = [f for f in factors if f is not None]
    if not present:
        raise AdapterError(f"{info.name}: module {module}: no adapter has this module")
    kw = dict(params or {})
    if "seed" in kw:
        kw["seed"] = module_seed(kw["seed"], module)
    try:
        if info.space == "delta":
            args: tuple = (_dense_stack(factors, present[0].d_out, present[0].d_in),  # (n, d_out, d_in)
                           torch.tensor([float(x) for x in weights], dtype=torch.float32))
        else:
            args = (list(factors), [float(x) for x in weights])
        return info.fn(*args, **kw)
    except LorasoupsError:
        raise
    except ValueError as e:
        raise AdapterError(f"{info.name}: module {module}: {e}") from None


def _dense_stack(factors: Sequence[LoraFactors | None], d_out: int, d_in: int) -> torch.Tensor:
    """ΔW_i = s_i B_i A_i in fp32 stacked as (n, d_out, d_in); zeros for missing modules.

    Raises:
        ValueError: a present factor's ΔW is not (d_out, d_in).
    """
    for f in factors:
        if f is not None and (f.d_out, f.d_in) != (d_out, d_in):
            raise ValueError(f"ΔW shapes differ: (d_out, d_in) {(d_out, d_in)} vs {(f.d_out, f.d_in)}")
    out = torch.zeros(len(factors), d_out, d_in, dtype=torch.float32)
    for i, f in enumerate(factors):
        if f is not None:
            torch.matmul(f.B.float(), f.A.float(), out=out[i])
            out[i] *= float(f.scale)
    return out


# ------------------------------------------------------------------------------------- full model

def _base_weight_files(base_path: Path) -> list[str]:
    index = base_path / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return sorted(set(wm.values()))
    if (base_path / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise ModelError(f"{base_path}: --full needs a local model folder with safetensors weights "
                     "(model.safetensors or model.safetensors.index.json)")


def _check_base_shapes(base_path: Path, files: list[str], shapes: Mapping[str, tuple[int, int]]) -> None:
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


def _write_full(tmp: Path, base_path: Path, files: list[str], dense: Callable[[str], torch.Tensor],
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


# ------------------------------------------------------------------------------------------ driver

def merge_adapters(adapters: Sequence[str | os.PathLike], method: str, out: str | os.PathLike, *,
                   weights: Sequence[float] | None = None, params: Mapping[str, Any] | None = None,
                   rank: int | None = None, full: bool = False, base: str | None = None, overwrite: bool = False,
                   svd: str = "exact", dtype: str | torch.dtype = "float32", allow_different_base: bool = False,
                   allow_pickle: bool = False, log: Callable[[str], None] | None = None,
                   progress: bool | None = None) -> Path:
    """Merge LoRA adapters with a registered merge method and write the result atomically.

    Args:
        adapters: PEFT LoRA folders (ranks, lora_alpha, rsLoRA and target modules may differ; a module
            missing from an adapter contributes zero).
        method: a registered ``kind="merge"`` method (``lorasoups ls methods``).
        out: output folder (a PEFT adapter, or a HF model folder with ``full``), plus ``merge_info.json``.
        weights: one weight per adapter (default: the method's, see ``lorasoups ls methods``:
            1/n each for ``linear``, the average; 1 each for the others, e.g. ``task_arithmetic``).
        params: method parameters (``{"density": 0.5}``); strings are converted to the defaults' types.
        rank: SVD step to rank K (best rank-K approximation, fp32). Dense methods without ``rank`` or
            ``full`` use the largest input rank. For exact methods ``rank`` truncates the rank-sum.
        full: write base + ΔW as a Hugging Face model folder instead of an adapter.
        base: base model for ``full`` (embedded name or local folder; default: the adapters' base);
            for adapter outputs it is recorded as ``base_model_name_or_path`` only when the adapters
            name none.
        overwrite: replace an existing ``out``.
        svd: ``exact`` (``torch.linalg.svd``) or ``randomized`` (``torch.svd_lowrank``, much faster for
            large matrices; the reported error is still exact for the written factors).
        dtype: dtype of the written adapter tensors (computation is always fp32).
        allow_different_base: accept adapters whose ``base_model_name_or_path`` differ.
        allow_pickle: accept pickled ``adapter_model.bin`` inputs.
        log: called with progress/summary lines (e.g. ``print``).
        progress: a per-module progress bar with ETA on stderr (:func:`lorasoups.progress.bar`):
            None shows it when stderr is a terminal, False never.

    Returns:
        ``Path(out)``. ``out/merge_info.json`` records method, parameters, weights, inputs with
        SHA-256, SVD errors per module and their maximum, package versions.

    Raises:
        ConfigError: unknown method/parameter, bad weights, ``rank`` with ``full``.
        AdapterError: unreadable/incompatible adapters (different base models, shape conflicts).
        ModelError: ``full`` without a usable local base model.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        LorasoupsError: ``out`` would overwrite an input or cannot be written (checked before merging).
    """
    from ..provenance import provenance, sha256_dir

    t0 = time.time()
    say = log or (lambda _s: None)
    info = get_merge_method(method)
    p = resolve_params(info, params)
    if not adapters:
        raise ConfigError("no adapters given")
    if rank is not None and full:
        raise ConfigError("--rank and --full exclude each other (--full writes the exact merged weights)")
    if rank is not None and int(rank) < 1:
        raise ConfigError(f"--rank must be ≥ 1, got {rank}")
    if svd not in SVD_DRIVERS:
        raise ConfigError(f"unknown SVD driver {svd!r}; choose one of {', '.join(SVD_DRIVERS)}")
    out_dtype = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if out_dtype not in _DTYPES.values():
        raise ConfigError(f"unsupported output dtype {dtype!r}; choose float32, float16 or bfloat16")
    streams = [open_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    w = resolve_weights(weights, len(streams), info.default_weights)
    name_check = align_streams(streams, base)
    say(name_check)
    base_model, modules = check_compatible(streams, allow_different_base)
    shapes = {m: next((s.modules[m].d_out, s.modules[m].d_in) for s in streams if m in s.modules) for m in modules}

    rank_default = False
    if info.space == "delta" and rank is None and not full:
        rank = max(e.r for s in streams for e in s.modules.values())
        rank_default = True
        say(f"{info.name} computes dense ΔW; SVD step to rank {rank} (largest input rank; set --rank or --full)")

    base_path: Path | None = None
    files: list[str] = []
    if full:
        from ..models import resolve_base

        ref = base or base_model
        if not ref:
            raise ModelError("--full needs the base model: pass --base (the adapters do not name one)")
        base_path = Path(resolve_base(ref))
        if not base_path.is_dir():
            raise ModelError(f"--full needs a local base model folder; {ref!r} resolved to {base_path}")
        files = _base_weight_files(base_path)
        _check_base_shapes(base_path, files, shapes)
    check_not_input(out, [s.path for s in streams] + ([base_path] if base_path else []))
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    check_writable(out)
    inputs = [{"path": str(s.path.resolve()), "base_model": s.base_model, "sha256": sha256_dir(s.path),
               "num_modules": len(s.modules), "missing_modules": sum(1 for m in modules if m not in s.modules)}
              for s in streams]

    errors: dict[str, float] = {}
    out_ranks: dict[str, int] = {}

    def merged(m: str) -> LoraFactors | torch.Tensor:
        """Merge one module: LoraFactors (exact or after the SVD step) or a dense ΔW (full only)."""
        r = merge_module(info, [s.read(m) for s in streams], w, p, m)
        if full:
            return r
        if isinstance(r, LoraFactors):
            if rank is not None:
                r, errors[m] = truncate_factors(r, int(rank))
            return r
        f, errors[m] = truncate_delta(r, int(rank), driver=svd, seed=module_seed(0, m))
        return f

    from ..progress import bar

    svd_step = not full and (rank is not None)
    pbar = bar(len(modules), f"merge {info.name}" + (" + SVD" if svd_step else ""), progress=progress,
               unit="module")
    with pbar, atomic_dir(out, overwrite=overwrite) as tmp:
        if full:
            def dense_of(m: str) -> torch.Tensor:
                r = merged(m)
                pbar.update(1)
                return r.delta() if isinstance(r, LoraFactors) else r

            _write_full(tmp, base_path, files, dense_of, set(modules))
        else:
            from ..io.adapters import CONFIG_NAME, PREFIX, WEIGHTS_NAME, build_config

            writer = SafetensorsStreamWriter(tmp / WEIGHTS_NAME)
            meta: dict[str, LoraFactors] = {}
            try:
                for m in modules:
                    f = merged(m).folded()
                    writer.add(f"{PREFIX}{m}.lora_A.weight", f.A.to(out_dtype))
                    writer.add(f"{PREFIX}{m}.lora_B.weight", f.B.to(out_dtype))
                    out_ranks[m] = f.r
                    # shape-only stand-ins (no memory) for build_config
                    meta[m] = LoraFactors(A=torch.empty(f.r, 0, device="meta"), B=torch.empty(0, f.r, device="meta"))
                    pbar.update(1)
                writer.close({"format": "pt"})
            except BaseException:
                writer.abort()
                raise
            # Every reader must see the same ΔW: pad all modules to one rank (exact; see build_config).
            r_common = max(out_ranks.values())
            if len(set(out_ranks.values())) > 1:
                from .stream import pad_adapter_file

                unpadded = tmp / (WEIGHTS_NAME + ".unpadded")
                (tmp / WEIGHTS_NAME).rename(unpadded)
                kinds = {f"{PREFIX}{m}.{k}.weight": k for m in modules for k in ("lora_A", "lora_B")}
                pad_adapter_file(unpadded, tmp / WEIGHTS_NAME, r_common, kinds)
                unpadded.unlink()
                say(f"module ranks {sorted(set(out_ranks.values()))} zero-padded to {r_common} "
                    "(exact; PEFT, vLLM and llama.cpp then read the same ΔW)")
            meta = {m: LoraFactors(A=torch.empty(r_common, 0, device="meta"), B=torch.empty(0, r_common, device="meta"))
                    for m in meta}
            cfg = build_config(meta, base_model or base)
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        record: dict[str, Any] = {
            "method": info.name,
            "space": info.space,
            "reference": info.reference,
            "params": p,
            "weights": w,
            "weights_default": weights is None,
            "output": "full" if full else "adapter",
            "rank": rank,
            "rank_default": rank_default,
            "svd_driver": svd if errors else None,
            "dtype": str(out_dtype).replace("torch.", "") if not full else None,
            "base_model": base_model,
            "base_path": str(base_path) if base_path else None,
            "inputs": inputs,
            "module_name_check": name_check,
            "num_modules": len(modules),
            "output_ranks": sorted(set(out_ranks.values())),
            "stored_rank": max(out_ranks.values()) if out_ranks else None,
            "svd": None if not errors else {
                "rel_fro_error": {m: errors[m] for m in modules if m in errors},
                "max_rel_fro_error": max(errors.values()),
                "max_module": max(errors, key=errors.get),
            },
            "provenance": provenance(),
            "seconds": round(time.time() - t0, 3),
        }
        (tmp / INFO_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        from ..io.card import write_model_card

        write_model_card(tmp, base_model=base_model or base, method=info.name, description=info.reference,
                         adapters=[s.path.name for s in streams], weights=w, params={**(p or {}), "rank": rank},
                         metrics={"max_rel_fro_error (SVD step)": max(errors.values())} if errors else None)
    if errors:  # per-module errors are in merge_info.json (svd.rel_fro_error)
        worst = max(errors, key=errors.get)
        say(f"SVD step ({svd}, rank {rank}): max relative Frobenius error {errors[worst]:.3e} at {worst}")
        if errors[worst] > SVD_ERROR_WARN:
            say(f"warning: the SVD step to rank {rank} keeps only part of the merged ΔW (relative Frobenius "
                f"error up to {errors[worst]:.2f}); a larger --rank (e.g. the sum of the input ranks) or --full "
                f"keeps more")
    ws = ", ".join(f"{x:.4g}" for x in w)
    how = "" if weights is not None else (" (default: 1/n, the average)" if info.default_weights == "mean"
                                          else " (default: 1 each, the sum)")
    say(f"wrote {out} ({'full model' if full else 'adapter'}, {info.name}, weights [{ws}]{how}, "
        f"{len(modules)} modules, {time.time() - t0:.1f}s)")
    return Path(out)
