"""Checks of the merge inputs: shared base model, equal module shapes, module paths mapped onto the
base model's modules (used by :func:`lorasoups.merge.driver.merge_adapters`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import AdapterError
from ..types import LoraFactors
from .stream import AdapterStream


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
