"""A faithful transformers tokenizer from a GGUF SentencePiece-style vocabulary
(``tokenizer.ggml.model = llama``), as in Gemma 3.

What the GGUF format means by such a vocabulary is what llama.cpp does with it (``llama-vocab.cpp``,
the SPM tokenizer, itself a copy of SentencePiece's BPE encoder):

1. Control tokens (type 3) and user-defined tokens (type 4: Gemma's runs of spaces, tabs and
   newlines, its HTML tags) are cut out of the raw text first, longest first, and stay whole.
2. In the remaining text every space becomes ``▁`` (U+2581); no pre-tokenizer splits it, and
   ``tokenizer.ggml.add_space_prefix`` says whether a ``▁`` is put in front (Gemma: no).
3. The text starts as one symbol per character; repeatedly the adjacent pair whose concatenation
   is a vocabulary token with the highest score is merged (leftmost on ties).
4. A character that is no token becomes its UTF-8 bytes as ``<0xXX>`` tokens (byte fallback).

The `tokenizers` BPE model does step 3 from a ranked merge list, so the merges are derived here:
every split of a normal token (type 1) into two normal tokens, ranked by the token's score. This is
the same merging whenever the vocabulary is closed under it (every character of a normal token is
itself a normal token, no other token type can be formed by a merge), which
:func:`spm_merges` checks. Two differences remain in principle, neither seen on the test strings
(tests/models/test_gemma.py) nor on 9,361 texts of the training data
(benchmarks/gemma_tokenizer_check.py): when one token can be formed at two places at
once by different splits, BPE takes them in merge-list order where llama.cpp goes left to right;
and added tokens are matched leftmost-longest where llama.cpp cuts out the longest token first
(the same for Gemma's tokens, which never overlap except as runs of one character).
"""

from __future__ import annotations

from ..errors import ModelError

#: GGUF ``tokenizer.ggml.token_type`` codes (llama.cpp ``llama_token_type``).
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """The BPE merge list equivalent to SPM score merging over a GGUF vocabulary.

    Args:
        tokens, scores, types: the GGUF arrays ``tokenizer.ggml.tokens`` / ``scores`` /
            ``token_type`` (same length, one entry per token id).

    Returns:
        ``(left, right)`` pairs, best first: every split of a normal token into two normal tokens,
        ordered by the joined token's score (descending; ties by token id), then by split position.

    Raises:
        ModelError: the vocabulary is not closed under merging (a character of a normal token is
            not a normal token, or a control / user-defined / byte token can be formed by a
            merge), so `tokenizers` BPE could not reproduce the SPM merging.
    """
    normal = {t for t, ty in zip(tokens, types) if ty == TT_NORMAL}
    stray = sorted({c for t in normal for c in t if c not in normal})
    if stray:
        raise ModelError(f"GGUF SentencePiece vocabulary: {len(stray)} character(s) of normal tokens are not "
                         f"normal tokens themselves (e.g. {stray[:5]}); cannot rebuild it faithfully")
    for t, ty in zip(tokens, types):
        if ty != TT_NORMAL and len(t) > 1 and any(t[:k] in normal and t[k:] in normal for k in range(1, len(t))):
            raise ModelError(f"GGUF SentencePiece vocabulary: token {t!r} (type {ty}) can be formed by merging "
                             "normal tokens; cannot rebuild it faithfully")
    order = sorted((i for i, ty in enumerate(types) if ty == TT_NORMAL and len(tokens[i]) > 1),
                   key=lambda i: (-scores[i], i))
    merges = []
    for i in order:
        t = tokens[i]
        merges.extend((t[:k], t[k:]) for k in range(1, len(t)) if t[:k] in normal and t[k:] in normal)
    return merges


def build_spm_tokenizer(meta: dict):
    """A transformers fast tokenizer from GGUF tokenizer metadata (``tokenizer.ggml.model = llama``).

    Built with the `tokenizers` library from the GGUF's own tokens, scores and token types: a
    normalizer turning spaces into ``▁``, no pre-tokenizer, BPE with the merges of
    :func:`spm_merges` and byte fallback, control tokens (type 3) as special added tokens and
    user-defined tokens (type 4) as plain added tokens (both matched whole in the raw text), a
    decoder undoing ``▁`` and byte fallback, BOS/EOS added by ``tokenizer(text)`` as
    ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` say, the chat template if the GGUF has
    one, and bos/eos/pad/unk from the GGUF ids.

    (transformers' own GGUF conversion of Gemma 3 stores the space-run tokens as ``▁▁...`` and
    lets BPE merges build them, so 40 spaces gave 16 + 24 instead of the longest-first 31 + 9.)

    Raises:
        ModelError: not a SentencePiece-style vocabulary, ``add_space_prefix`` set, byte tokens
            missing, or a vocabulary :func:`spm_merges` refuses.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind != "llama":
        raise ModelError(f"GGUF tokenizer model {kind!r} is not a SentencePiece-style vocabulary ('llama')")
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        raise ModelError("GGUF tokenizer sets add_space_prefix; only vocabularies without a space prefix "
                         "(Gemma's) are rebuilt")
    tokens = list(meta["tokenizer.ggml.tokens"])
    n = len(tokens)
    scores = [float(s) for s in meta.get("tokenizer.ggml.scores") or [0.0] * n]
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type") or [TT_NORMAL] * n]
    if len(scores) != n or len(types) != n:
        raise ModelError(f"GGUF tokenizer: {n} tokens but {len(scores)} scores and {len(types)} token types")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != n:
        raise ModelError("GGUF tokenizer vocabulary has duplicate tokens")
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise ModelError(f"GGUF tokenizer lacks {len(missing)} byte tokens (e.g. {missing[0]}); byte fallback needs all 256")

    def tok_of(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]

    unk = tok_of("unknown")
    tk = Tokenizer(models.BPE(vocab=vocab, merges=spm_merges(tokens, scores, types), unk_token=unk,
                              fuse_unk=False, byte_fallback=True, ignore_merges=False))
    tk.normalizer = normalizers.Replace(" ", SPACE)
    tk.pre_tokenizer = None
    tk.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i, t in enumerate(types) if t == TT_USER_DEFINED])
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i, t in enumerate(types) if t == TT_CONTROL])
    bos, eos = tok_of("bos"), tok_of("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=unk,
        pad_token=tok_of("padding") or eos, chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False, model_max_length=int(ctx) if ctx else int(1e30),
        add_bos_token=add_bos, add_eos_token=add_eos)
