"""The merge driver: validate adapters, run a registered merge method module by module, write the
result as a PEFT LoRA folder (exact rank-sum, or an SVD step to rank K) or as a full HF model folder.

Streaming: only one module's factors (and, for dense methods, its n deltas) are in memory at a
time; the output adapter is written tensor by tensor (:class:`.stream.SafetensorsStreamWriter`),
and ``full=True`` rewrites the base model one safetensors shard at a time, so peak memory does not
grow with the number of layers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import AdapterError, ConfigError, LorasoupsError, ModelError
from ..methods import METHODS, MethodInfo
from ..paths import atomic_dir, check_not_input, check_writable
from ..registry import suggest
from ..types import LoraFactors
from .full_model import base_weight_files, check_base_shapes, write_full
from .inputs import _same_base, align_streams, check_compatible  # noqa: F401  (_same_base: tests)
from .stream import SafetensorsStreamWriter, open_adapter
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


def _from_text(value: Any) -> Any:
    """A CLI string read as YAML (``0.5`` -> float, ``none`` -> None, ``[1, 2]`` -> list); others unchanged."""
    if not isinstance(value, str):
        return value
    from ..config import parse_yaml

    try:
        out = parse_yaml(value)
    except ConfigError:
        return value
    return None if isinstance(out, str) and out.lower() == "none" else out


def resolve_params(info: MethodInfo, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Method options with defaults filled in, validated once by the method's option spec
    (``info.options``; CLI strings are read as YAML first: ``"0.5"`` -> 0.5).

    Raises:
        ConfigError: every problem: unknown or renamed option (with "did you mean" / the new name),
            wrong type, out of range, not one of the choices.
    """
    from ..spec import NoOptions

    given = {k: _from_text(v) for k, v in (params or {}).items()}
    return (info.options or NoOptions).parse(given, where=info.name).model_dump()


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
        files = base_weight_files(base_path)
        check_base_shapes(base_path, files, shapes)
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

            write_full(tmp, base_path, files, dense_of, set(modules))
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
