"""Seeded sampling, raw-text chunking and prompt/response tokenisation of training examples
(the pieces :func:`lorasoups.train.data.load_training_data` is built from)."""

from __future__ import annotations

import math
import random
import zlib
from typing import Any, Sequence

from ..errors import ConfigError
from ..prompts import IGNORE_INDEX, PromptTooLong, encode_continuation, encode_pair, render_prompt, start_tokens
from .formats import TextExample, render_messages

DEFAULT_TEXT_OVERLAP = 32


def _rng(seed: int, *salt: object) -> random.Random:
    """A ``random.Random`` from ``seed`` and a salt, stable across processes (no ``hash()``)."""
    return random.Random((int(seed) << 32) ^ zlib.crc32("|".join(map(str, salt)).encode()))


def select_count(n: int, max_samples: int | None = None, fraction: float | None = None) -> int:
    """How many of ``n`` items to keep: ``round(n · fraction)`` (at least 1), capped at ``max_samples``."""
    k = n
    if fraction is not None:
        k = max(1, int(round(n * fraction)))
    if max_samples is not None:
        k = min(k, int(max_samples))
    return min(k, n)


def select_indices(n: int, k: int, rng: random.Random) -> list[int]:
    """``k`` distinct indices out of ``range(n)`` in file order (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted(rng.sample(range(n), k))


def take_with_repeat(items: Sequence[Any], k: int, rng: random.Random) -> list[Any]:
    """Exactly ``k`` items: whole copies of ``items`` while ``k >= len(items)``, then a random
    subset without replacement for the remainder."""
    n = len(items)
    if n == 0 or k <= 0:
        return []
    full, rest = divmod(k, n)
    out = list(items) * full
    out += [items[i] for i in sorted(rng.sample(range(n), rest))]
    return out


def mix_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Per-source counts for a weighted mix of ``N = sum(sizes)`` examples: ``N · w_i / Σw``
    rounded by largest remainder (so they sum to ``N``), each at least 1."""
    total, wsum = int(sum(sizes)), float(sum(weights))
    raw = [total * w / wsum for w in weights]
    counts = [int(math.floor(x)) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return [max(1, c) for c in counts]


def chunk_spans(n_tokens: int, cutoff_len: int, overlap: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` over ``n_tokens`` tokens for continued pre-training.

    Each window has ``cutoff_len`` tokens (the last one may be shorter); consecutive windows share
    exactly ``overlap`` tokens; the first starts at 0 and the last ends at ``n_tokens``, so every
    token is covered.

    Raises:
        ConfigError: ``cutoff_len < 2`` or ``overlap`` not in ``[0, cutoff_len)``.
    """
    if cutoff_len < 2:
        raise ConfigError(f"cutoff length {cutoff_len} is too short for raw-text chunks")
    if not 0 <= overlap < cutoff_len:
        raise ConfigError(f"text overlap {overlap} must be in [0, cutoff length {cutoff_len})")
    spans, start = [], 0
    while True:
        end = min(start + cutoff_len, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start = end - overlap


def tokenize_text(tokenizer: Any, text: str, add_eos: bool = True) -> list[int]:
    """Token ids of a whole corpus (no start tokens; EOS appended when ``add_eos``)."""
    ids = encode_continuation(tokenizer, text)
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def text_chunks(tokenizer: Any, text: str, cutoff_len: int, overlap: int = DEFAULT_TEXT_OVERLAP) -> list[dict[str, list[int]]]:
    """Raw text -> training examples of at most ``cutoff_len`` tokens with labels on every token.

    Each chunk starts with the tokenizer's start tokens (:func:`lorasoups.prompts.start_tokens`,
    e.g. BOS for Llama-2, none for SmolLM2) as a sequence on its own would; the text windows are
    shortened by as many tokens. The start tokens carry no loss.
    """
    ids = tokenize_text(tokenizer, text)
    start = start_tokens(tokenizer)
    width = cutoff_len - len(start)
    out = []
    for s, e in chunk_spans(len(ids), width, min(overlap, width // 2)):
        piece = ids[s:e]
        out.append({"input_ids": start + piece, "labels": [IGNORE_INDEX] * len(start) + list(piece)})
    return out


def encode_example(tokenizer: Any, ex: TextExample, cutoff_len: int | None, train_on_inputs: bool = False,
                   truncate_response: bool = False) -> dict[str, list[int]]:
    """Prompt (shared format, :func:`lorasoups.prompts.render_prompt`) + response -> ids and labels.

    Raises:
        PromptTooLong: the prompt is not shorter than ``cutoff_len`` (names the file and record).
        ResponseTooLong: the response does not fit after the prompt and not ``truncate_response``.
    """
    if ex.messages is not None:
        prompt = render_messages(tokenizer, ex.messages)
    else:
        prompt = render_prompt(tokenizer, ex.instruction, ex.input or None)
    try:
        return encode_pair(tokenizer, prompt, ex.output, cutoff_len=cutoff_len, train_on_inputs=train_on_inputs,
                           where=ex.where, truncate_response=truncate_response)
    except PromptTooLong as e:
        raise PromptTooLong(f"{e}; raise --cutoff-len or drop the record") from None
