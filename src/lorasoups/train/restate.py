"""Restating raw text for knowledge injection: extra copies of each document with its sentences in
another order.

Continued pre-training on one copy of a text lets a small model reproduce the text, but rarely
answer questions about it; knowledge-injection studies find that seeing each fact in several
contexts helps (Allen-Zhu & Li 2023, "Physics of Language Models: Part 3.1", arXiv 2309.14316,
§4: permuting the sentences of each biography was one of the augmentations that made facts
extractable). :func:`shuffled_copies` is that permutation, and only that: no sentence is changed,
added or removed, and nothing from any evaluation set is used. It is the data spec key
``shuffled_copies=K`` of raw-text sources (:mod:`lorasoups.train.data`).
"""

from __future__ import annotations

import random
import re

# a sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before
# whitespace and an upper-case letter, digit, quote or bracket; or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u2019\u201d)\]]?\s+(?=[A-Z0-9\"'\u2018\u201c(\[])|\n+")


def split_sentences(document: str) -> list[str]:
    """The sentences (and stand-alone lines such as headings) of ``document``, stripped, in order.

    A rule-based splitter: a sentence ends at ``.``, ``!`` or ``?`` followed by white space and
    a capital letter, digit, quote or bracket, or at a line break. Abbreviations followed by a
    capital (``e.g. The``) are split too; the pieces are reordered, never altered.
    """
    parts: list[str] = []
    pos = 0
    for m in _SENTENCE_END.finditer(document):
        sep = m.group(0)
        closing = sep[: len(sep) - len(sep.lstrip("\"'\u2019\u201d)]"))]  # stays with its sentence
        piece = (document[pos:m.start()] + closing).strip()
        if len(piece) <= 3 and m.group(0).strip("\n"):  # an enumerator such as "D." or "1." heads what follows
            continue
        if piece:
            parts.append(piece)
        pos = m.end()
    tail = document[pos:].strip()
    if tail:
        parts.append(tail)
    return parts


def split_documents(text: str) -> list[str]:
    """Documents of a raw-text corpus: the blocks separated by one or more blank lines."""
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


def shuffled_copies(text: str, copies: int, seed: int = 0) -> str:
    """``text`` followed by ``copies`` restated copies of it.

    Each copy holds every document of ``text`` (:func:`split_documents`), in the original
    document order, with the document's sentences (:func:`split_sentences`) in a random order
    drawn from ``random.Random(f"{seed}:{copy}:{document index}")``, one per line;
    documents are separated by blank lines. Copy 0 is ``text`` itself, unchanged. A document of
    one sentence is repeated as it is.

    Args:
        text: the raw-text corpus.
        copies: extra copies (int >= 0); 0 returns ``text``.
        seed: seed of the permutations.

    Returns:
        str: ``text`` + the copies; ``copies + 1`` times as many sentences as ``text``.

    Raises:
        ValueError: ``copies`` < 0.
    """
    if copies < 0:
        raise ValueError(f"shuffled_copies must be >= 0, got {copies}")
    if copies == 0:
        return text
    docs = [split_sentences(d) for d in split_documents(text)]
    out = [text.strip()]
    for c in range(1, copies + 1):
        blocks = []
        for i, sents in enumerate(docs):
            order = list(sents)
            random.Random(f"{seed}:{c}:{i}").shuffle(order)
            blocks.append("\n".join(order))
        out.append("\n\n".join(blocks))
    return "\n\n".join(out) + "\n"
