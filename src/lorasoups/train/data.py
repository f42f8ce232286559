"""Training data for skill LoRAs, DATA-MIX, CAT, LoRA Hub and MoE: data specs, record formats,
tokenisation, raw-text chunking, seeded sampling and mixing, and batch collation.

A *data spec* names a catalogue dataset (:data:`lorasoups.datasets.DATASETS`) or a file, optionally
followed by ``:key=value,...`` options (see :func:`parse_data_spec`)::

    gsm8k:max_samples=300     codealpaca:fraction=0.05     /x/y.json     dnd_manual:format=text

Record formats (``format=`` key; ``auto`` picks one from the catalogue entry, the file suffix or the
fields of the records):

- ``instruction``: ``instruction``, optional ``input``, ``output`` (Alpaca, CodeAlpaca, prompt-format sets).
- ``prompt_completion``: ``prompt`` -> ``completion``; the prompt is the user turn, rendered in the
  shared format like an instruction (so evaluation with the same prompt sees the same text).
- ``messages``: a chat ``messages`` list of ``{role: system|user|assistant, content}``; rendered with
  the tokenizer's chat template up to the *last* assistant turn, which is the response: the loss is
  on that turn only (earlier assistant turns are context). Turns after it are ignored.
- ``qa``: ``question`` -> ``answer`` (GSM8K: the worked solution ending in ``#### n`` is kept).
- ``mbpp``: ``text`` -> ``code``.
- ``squad``: ``context`` + ``question`` -> first of ``answers``; unanswerable questions are skipped.
  Rendered like the LoRA Soups reading-comprehension test set (:data:`SQUAD_INSTRUCTION`), the
  response being ``"the correct answer is <answer>"`` as in that set's ``output`` field.
- ``text``: raw text for continued pre-training: the whole corpus is tokenised once, cut into
  windows of ``cutoff_len`` tokens that overlap by ``text_overlap`` tokens and together cover every
  token (:func:`chunk_spans`), with the loss on every token. ``shuffled_copies=K`` appends K
  copies of every document (blank-line separated block) with its sentences in a seeded random
  order before chunking (:mod:`lorasoups.train.restate`; a knowledge-injection augmentation).

Files: ``.json`` (a list) and ``.jsonl``, ``.csv`` / ``.tsv`` and ``.parquet``
(:func:`lorasoups.datasets.read_records`). Field mapping: ``FIELD=COLUMN`` keys in the spec read a
format's field from another column, e.g. ``my.csv:prompt=question,completion=answer``.

Instruction-like records are turned into prompt/response token ids by the one prompt format shared
with evaluation (:func:`lorasoups.prompts.render_prompt`, :func:`lorasoups.prompts.encode_pair`):
the loss is on the response tokens only unless ``train_on_inputs``.

Mixing (the DATA-MIX baseline of LoRA Soups, arXiv 2410.13025 §4): several specs are concatenated
after per-spec sampling. If any spec carries ``weight=``, the mix is resampled so that spec ``i``
contributes ``round(N · w_i / Σw)`` examples, ``N`` being the total of the per-spec selections
(specs without a weight count as weight 1); smaller sets are repeated, larger ones subsampled.
All randomness derives from ``seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..datasets import DATASETS, load_dataset, read_records, squad_records
from ..errors import ConfigError, DataError
from ..prompts import IGNORE_INDEX, PromptTooLong, ResponseTooLong, render_prompt, user_text
from ..registry import suggest
from .formats import (FIELD_KEYS, ROLES, SQUAD_INSTRUCTION, SQUAD_RESPONSE, TextExample, apply_field_map,  # noqa: F401
                      record_to_example, render_messages)
from .formats import _detect_format

from .restate import shuffled_copies
from .data_specs import FORMATS, SPEC_KEYS, DataSpec, parse_data_spec, with_weights  # noqa: F401
from .encode import (DEFAULT_TEXT_OVERLAP, _rng, chunk_spans, encode_example, mix_counts, select_count,  # noqa: F401
                     select_indices, take_with_repeat, text_chunks, tokenize_text)

TEXT_SUFFIXES = (".txt", ".text", ".md")
RECORD_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")



# --------------------------------------------------------------------------------------------
# Loading records
# --------------------------------------------------------------------------------------------

@dataclass
class LoadedSource:
    """A spec resolved and read: raw text (``text``) or records (``examples``), plus provenance."""

    spec: DataSpec
    path: Path
    format: str
    catalogue: str | None
    text: str | None = None
    examples: list[TextExample] = field(default_factory=list)
    n_records: int = 0
    n_skipped: int = 0


def resolve_path(spec: DataSpec, data_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """The file a spec reads and its catalogue name (None for a plain file).

    Raises:
        DataError: neither a catalogue name nor an existing file (with "did you mean"), or the
            catalogue file is missing from the data dir.
    """
    if spec.source in DATASETS:
        return DATASETS.get(spec.source).path(data_dir), spec.source
    p = Path(spec.source).expanduser()
    if p.is_file():
        return p.resolve(), None
    if p.exists():
        raise DataError(f"data {spec.source}: {p} is not a file")
    looks_like_path = "/" in spec.source or p.suffix.lower() in RECORD_SUFFIXES + TEXT_SUFFIXES
    if looks_like_path:
        raise DataError(f"data file {p} not found")
    raise DataError(f"data {spec.source!r} is neither a catalogue dataset{suggest(spec.source, DATASETS.names())} "
                    f"nor an existing file; see `lorasoups ls datasets`")


def _catalogue_format(name: str) -> str:
    info = DATASETS.get(name)
    if info.fmt in ("text", "bio_passages"):
        return "text"
    if info.fmt == "squad":
        return "squad"
    if name.startswith("gsm8k"):
        return "qa"
    if name == "mbpp":
        return "mbpp"
    return "instruction"


def load_source(spec: str | DataSpec, data_dir: str | Path | None = None) -> LoadedSource:
    """Resolve and read one spec (no sampling, no tokenisation).

    Raises:
        DataError: unknown/missing dataset, unreadable or non-JSON file, a bad record (names the
            file and record), or an empty dataset.
        ConfigError: a bad spec string.
    """
    spec = parse_data_spec(spec)
    path, cat = resolve_path(spec, data_dir)
    fmt = spec.format
    if fmt == "auto":
        if cat is not None:
            fmt = _catalogue_format(cat)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            fmt = "text"
    src = LoadedSource(spec=spec, path=path, format=fmt, catalogue=cat)
    if fmt == "text":
        if cat is not None and DATASETS.get(cat).fmt in ("text", "bio_passages"):
            text = load_dataset(cat, data_dir)
            assert isinstance(text, str)
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: cannot read as UTF-8 text: {e}") from None
        if not text.strip():
            raise DataError(f"{path}: empty dataset (no text)")
        if spec.shuffled_copies:
            text = shuffled_copies(text, spec.shuffled_copies)
        src.text = text
        return src
    if fmt == "squad" and (cat is not None and DATASETS.get(cat).fmt == "squad" or _is_nested_squad(path)):
        records = squad_records(path)
    else:
        records = read_records(path)
    if spec.shuffled_copies:
        raise DataError(f"{path}: shuffled_copies applies to raw text (format=text), not to {fmt} records")
    src.n_records = len(records)
    if not records:
        raise DataError(f"{path}: empty dataset (no records)")
    if spec.fields:
        records = [apply_field_map(r, spec.fields, f"{path}: record {i}") for i, r in enumerate(records)]
    if fmt == "auto":  # decided by the first record, then required of every record
        fmt = _detect_format(records[0]) or "auto"
        src.format = fmt
    for i, rec in enumerate(records):
        ex = record_to_example(rec, fmt, f"{path}: record {i}")
        if ex is None:
            src.n_skipped += 1
        else:
            src.examples.append(ex)
    if not src.examples:
        raise DataError(f"{path}: no usable records ({src.n_skipped} of {len(records)} skipped as unanswerable)")
    return src


def _is_nested_squad(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8")[:4096]
    except (OSError, UnicodeDecodeError):
        return False
    return '"paragraphs"' in head


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

#: What to do with a record whose response does not fit ``cutoff_len`` after its prompt:
#: ``skip`` it (default; it would lose the end of its response, e.g. GSM8K's ``#### n`` line and
#: the end-of-turn token) or ``keep`` it cut to fit. Both are counted and reported.
LONG_RESPONSE_POLICIES = ("skip", "keep")


@dataclass
class SourceStats:
    """What one spec contributed (for ``train_info.json``).

    ``selected`` is the target count (after ``max_samples`` / ``fraction``); records that are
    skipped for length are replaced by further seeded draws from the rest of the dataset while
    there are any, so ``used`` falls short of ``selected`` only when the dataset runs out.
    """

    spec: str
    name: str
    file: str
    format: str
    available: int          # records (or raw-text chunks) usable
    selected: int           # target after max_samples / fraction
    in_mix: int             # after weighting (== used without weights)
    skipped: int = 0        # records skipped in all (unanswerable + too long)
    used: int = 0           # examples kept for training (before weighting)
    unanswerable: int = 0   # SQuAD records without an answer (skipped by design)
    skipped_long_prompts: int = 0      # prompt alone >= cutoff_len (with skip_long_prompts)
    skipped_long_responses: int = 0    # response would be cut (long_responses="skip")
    truncated_responses: int = 0       # response cut to fit and kept (long_responses="keep")
    cutoff_len: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def cut_note(self) -> str:
        """One line on what the cutoff length did to this source ('' when nothing)."""
        parts = []
        if self.skipped_long_prompts:
            parts.append(f"{self.skipped_long_prompts} skipped (prompt >= {self.cutoff_len} tokens)")
        if self.skipped_long_responses:
            parts.append(f"{self.skipped_long_responses} skipped (response would be cut at {self.cutoff_len} tokens)")
        if self.truncated_responses:
            parts.append(f"{self.truncated_responses} kept with the response cut at {self.cutoff_len} tokens")
        if not parts:
            return ""
        short = f"; only {self.used} of {self.selected} examples" if self.used < self.selected else ""
        return f"{self.name}: " + ", ".join(parts) + short


@dataclass
class TrainingData:
    """Tokenised, mixed and shuffled examples plus per-source statistics."""

    examples: list[dict[str, list[int]]]
    sources: list[SourceStats]
    files: list[Path]
    origin: list[int] = field(default_factory=list)  # per example: index of its spec in ``sources``

    def cut_report(self) -> list[str]:
        """Lines naming, per source, the records skipped or cut for length (empty when none)."""
        return [n for n in (s.cut_note() for s in self.sources) if n]

    def cut_summary(self) -> dict[str, int]:
        """Totals over sources: ``skipped_long_prompts``, ``skipped_long_responses``, ``truncated_responses``."""
        keys = ("skipped_long_prompts", "skipped_long_responses", "truncated_responses")
        return {k: sum(getattr(s, k) for s in self.sources) for k in keys}


def _encode_records(tokenizer: Any, src: LoadedSource, target: int, rng: random.Random, refill_rng: random.Random,
                    st: SourceStats, *, cutoff_len: int, train_on_inputs: bool, skip_long_prompts: bool,
                    long_responses: str) -> list[dict[str, list[int]]]:
    """Encode ``target`` seeded records of ``src``; records skipped for length are replaced by
    further draws (``refill_rng``) from the records not selected, while any are left."""
    n = len(src.examples)
    first = select_indices(n, target, rng)
    chosen = set(first)
    rest = [i for i in range(n) if i not in chosen]
    refill_rng.shuffle(rest)
    queue, keep = list(first), []
    while queue and len(keep) < target:
        ex = src.examples[queue.pop(0)]
        try:
            keep.append(encode_example(tokenizer, ex, cutoff_len, train_on_inputs))
            continue
        except PromptTooLong:
            if not skip_long_prompts:
                raise
            st.skipped_long_prompts += 1
        except ResponseTooLong:
            if long_responses == "keep":
                keep.append(encode_example(tokenizer, ex, cutoff_len, train_on_inputs, truncate_response=True))
                st.truncated_responses += 1
                continue
            st.skipped_long_responses += 1
        if rest:  # a skipped record: draw a replacement
            queue.append(rest.pop())
    return keep


def load_training_data(specs: Iterable[str | DataSpec], tokenizer: Any, *, cutoff_len: int = 512,
                       max_samples: int | None = None, fraction: float | None = None, seed: int = 0,
                       train_on_inputs: bool = False, data_dir: str | Path | None = None,
                       text_overlap: int = DEFAULT_TEXT_OVERLAP, skip_long_prompts: bool = False,
                       long_responses: str = "skip") -> TrainingData:
    """Like :func:`load_training_examples`, also returning per-source statistics and files
    (:class:`SourceStats`: how many records were skipped or cut for length)."""
    if long_responses not in LONG_RESPONSE_POLICIES:
        raise ConfigError(f"long_responses {long_responses!r}{suggest(str(long_responses), LONG_RESPONSE_POLICIES)}; "
                          f"choose from {', '.join(LONG_RESPONSE_POLICIES)}")
    parsed = [parse_data_spec(s) for s in specs]
    if not parsed:
        raise ConfigError("no training data given; pass at least one --data")
    per_source: list[list[dict[str, list[int]]]] = []
    stats: list[SourceStats] = []
    files: list[Path] = []
    for idx, spec in enumerate(parsed):
        src = load_source(spec, data_dir)
        files.append(src.path)
        rng = _rng(seed, "select", idx, spec.source)
        # both caps hold (a skill's spec cap, and the caller's cap, e.g. CAT's max_samples on a
        # skill's data): the smaller wins; a spec's own fraction replaces the caller's.
        caps = [c for c in (spec.max_samples, max_samples) if c is not None]
        ms = min(caps) if caps else None
        fr = spec.fraction if spec.fraction is not None else fraction
        st = SourceStats(str(spec), spec.name, str(src.path), src.format, 0, 0, 0, unanswerable=src.n_skipped,
                         cutoff_len=cutoff_len)
        if src.text is not None:
            chunks = text_chunks(tokenizer, src.text, cutoff_len, text_overlap)
            st.available = len(chunks)
            st.selected = select_count(len(chunks), ms, fr)
            keep = [chunks[i] for i in select_indices(len(chunks), st.selected, rng)]
        else:
            st.available = len(src.examples)
            st.selected = select_count(st.available, ms, fr)
            keep = _encode_records(tokenizer, src, st.selected, rng, _rng(seed, "refill", idx, spec.source), st,
                                   cutoff_len=cutoff_len, train_on_inputs=train_on_inputs,
                                   skip_long_prompts=skip_long_prompts, long_responses=long_responses)
            if not keep:
                raise DataError(f"{src.path}: no example fits the cutoff length {cutoff_len} "
                                f"({st.skipped_long_prompts} prompts and {st.skipped_long_responses} responses too long)")
        st.skipped = st.unanswerable + st.skipped_long_prompts + st.skipped_long_responses
        st.used = st.in_mix = len(keep)
        per_source.append(keep)
        stats.append(st)
    if any(s.weight is not None for s in parsed):
        weights = [s.weight if s.weight is not None else 1.0 for s in parsed]
        counts = mix_counts([len(x) for x in per_source], weights)
        per_source = [take_with_repeat(x, c, _rng(seed, "mix", i)) for i, (x, c) in enumerate(zip(per_source, counts))]
        for st, x in zip(stats, per_source):
            st.in_mix = len(x)
    flat = [(ex, i) for i, x in enumerate(per_source) for ex in x]
    _rng(seed, "shuffle").shuffle(flat)  # the same permutation as shuffling the examples alone
    return TrainingData([ex for ex, _ in flat], stats, files, [i for _, i in flat])


def load_training_examples(specs: list[str | DataSpec], tokenizer: Any, *, cutoff_len: int = 512,
                           max_samples: int | None = None, fraction: float | None = None, seed: int = 0,
                           train_on_inputs: bool = False, data_dir: str | Path | None = None,
                           **kwargs: Any) -> list[dict[str, list[int]]]:
    """Tokenised training examples for one or more data specs (their union, or a weighted mix).

    Args:
        specs: data specs (strings or :class:`DataSpec`). The function-level ``max_samples`` and
            ``fraction`` apply to *each* spec; a spec's own ``fraction`` replaces the
            function-level one, and when both give ``max_samples`` the smaller cap holds.
        tokenizer: HF tokenizer of the base model (its chat template decides the prompt format).
        cutoff_len: maximum tokens per example; raw text is chunked to it; a record whose
            response does not fit after its prompt is skipped (or cut, ``long_responses="keep"``).
        seed: seeds sampling, mixing and the final shuffle (stable across processes).
        train_on_inputs: also put the loss on prompt tokens.
        data_dir: where catalogue datasets live (:func:`lorasoups.paths.find_data_dir`).
        **kwargs: ``text_overlap`` (tokens shared by consecutive raw-text chunks, default 32, at
            most ``cutoff_len // 2``), ``skip_long_prompts`` (drop instead of failing on prompts
            not shorter than ``cutoff_len``), ``long_responses`` (``skip``, the default, or
            ``keep`` records whose response does not fit after the prompt; see
            :data:`LONG_RESPONSE_POLICIES`). Skipped records are replaced by further seeded draws.

    Returns:
        A shuffled list of ``{"input_ids": list[int], "labels": list[int]}`` (same lengths, at most
        ``cutoff_len``; labels are ``IGNORE_INDEX`` = -100 where no loss is taken).

    Raises:
        DataError: unknown dataset, missing/unreadable/non-JSON file, a record with missing
            fields, an empty dataset, or a prompt not shorter than ``cutoff_len`` — each naming the
            file and record.
        ConfigError: a malformed spec.
    """
    return load_training_data(specs, tokenizer, cutoff_len=cutoff_len, max_samples=max_samples, fraction=fraction,
                              seed=seed, train_on_inputs=train_on_inputs, data_dir=data_dir, **kwargs).examples


def load_records(spec: str | DataSpec, data_dir: str | Path | None = None, *, seed: int = 0,
                 max_samples: int | None = None, fraction: float | None = None) -> list[TextExample]:
    """The instruction-like examples of a spec (seeded ``max_samples``/``fraction`` applied), in file order.

    Raises:
        DataError: as :func:`load_source`, or the spec is raw text (it has no prompt/response pairs).
    """
    spec = parse_data_spec(spec)
    src = load_source(spec, data_dir)
    if src.text is not None:
        raise DataError(f"{src.path}: raw-text data has no prompt/response pairs")
    ms = spec.max_samples if spec.max_samples is not None else max_samples
    fr = spec.fraction if spec.fraction is not None else fraction
    n = len(src.examples)
    return [src.examples[i] for i in select_indices(n, select_count(n, ms, fr), _rng(seed, "select", 0, spec.source))]


def load_text_pairs(spec: str | DataSpec, data_dir: str | Path | None = None, *, tokenizer: Any = None,
                    seed: int = 0, max_samples: int | None = None, fraction: float | None = None) -> list[tuple[str, str]]:
    """(prompt, response) text pairs of a spec, exactly as training sees them.

    With ``tokenizer`` the prompt is the full rendered prompt (:func:`lorasoups.prompts.render_prompt`,
    chat template or Alpaca); without it, the bare user text (instruction, blank line, input) for
    callers that render it themselves. Responses carry no end-of-sequence token.

    Raises:
        DataError: as :func:`load_records`.
    """
    out = []
    for ex in load_records(spec, data_dir, seed=seed, max_samples=max_samples, fraction=fraction):
        prompt = render_prompt(tokenizer, ex.instruction, ex.input or None) if tokenizer is not None \
            else user_text(ex.instruction, ex.input or None)
        out.append((prompt, ex.output))
    return out


def collate(examples: Sequence[dict[str, Sequence[int]]], pad_token_id: int | None) -> dict[str, Any]:
    """Right-pad a batch.

    Args:
        examples: dicts with ``input_ids`` and (optionally) ``labels`` lists of equal length.
        pad_token_id: id written into padding positions (None -> 0; it is masked anyway).

    Returns:
        ``input_ids`` (B, T) int64, ``attention_mask`` (B, T) int64 (1 on real tokens), ``labels``
        (B, T) int64 with ``IGNORE_INDEX`` (-100) on padding (copies ``input_ids`` when an
        example has no labels); T is the longest example.

    Raises:
        DataError: empty batch, or ``input_ids`` and ``labels`` of different lengths.
    """
    import torch

    if not examples:
        raise DataError("collate: empty batch")
    pad = 0 if pad_token_id is None else int(pad_token_id)
    T = max(len(e["input_ids"]) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        x = list(e["input_ids"])
        y = list(e.get("labels", x))
        if len(y) != len(x):
            raise DataError(f"collate: example {i} has {len(x)} input_ids but {len(y)} labels")
        n = len(x)
        ids[i, :n] = torch.tensor(x, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(y, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
