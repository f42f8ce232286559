"""Data specs: ``name_or_file[:key=value,...]`` (one ``--data`` argument) and DATA-MIX weights.

See :mod:`lorasoups.train.data` for the keys, formats and how specs are loaded and mixed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..datasets import DATASETS
from ..errors import ConfigError
from ..registry import suggest
from .formats import FIELD_KEYS

FORMATS = ("auto", "instruction", "prompt_completion", "messages", "qa", "mbpp", "squad", "text")
SPEC_KEYS = ("max_samples", "fraction", "weight", "format", "shuffled_copies")


@dataclass(frozen=True)
class DataSpec:
    """One ``--data`` argument.

    Attributes:
        source: catalogue dataset name or file path.
        max_samples: keep at most this many examples (records, or chunks for raw text).
        fraction: keep this fraction (0 < f <= 1) of the examples, at least one.
        weight: mixing weight in DATA-MIX (see module docstring); None = plain union.
        format: record format, one of :data:`FORMATS`.
        shuffled_copies: raw text only: this many extra copies of each document with its
            sentences in a seeded random order (:func:`lorasoups.train.restate.shuffled_copies`).
        fields: field mapping ``((field, column), ...)``: the record's ``field`` is read from
            ``column`` (keys of :data:`FIELD_KEYS`).
    """

    source: str
    max_samples: int | None = None
    fraction: float | None = None
    weight: float | None = None
    format: str = "auto"
    shuffled_copies: int | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        opts = [f"{k}={getattr(self, k)}" for k in SPEC_KEYS
                if getattr(self, k) is not None and not (k == "format" and self.format == "auto")]
        opts += [f"{k}={v}" for k, v in self.fields]
        return self.source + (":" + ",".join(opts) if opts else "")

    @property
    def name(self) -> str:
        """Short display name: the catalogue name, or the file name without suffix."""
        return self.source if self.source in DATASETS else Path(self.source).stem


_KV = re.compile(r"^\s*[A-Za-z_]+\s*=\s*[^,]*$")


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Parse ``SOURCE[:key=value,key=value]`` into a :class:`DataSpec`.

    Keys: ``max_samples`` (int >= 1), ``fraction`` (0 < f <= 1), ``weight`` (> 0), ``format``
    (one of :data:`FORMATS`), ``shuffled_copies`` (int >= 1; raw text only), and field mappings ``FIELD=COLUMN`` for the fields of
    :data:`FIELD_KEYS` (e.g. ``prompt=question,completion=answer``). A colon whose tail is not
    ``key=value`` pairs is part of the path.

    Raises:
        ConfigError: empty source, unknown key (with "did you mean"), or a bad value; the
            message quotes the spec.
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"data spec {spec!r}: empty; give a catalogue dataset name or a file path")
    text = spec.strip()
    source, opts = text, {}
    head, sep, tail = text.rpartition(":")
    if sep and tail.strip() and all(_KV.match(p) for p in tail.split(",")):
        source = head.strip()
        for part in tail.split(","):
            k, _, v = part.partition("=")
            k, v = k.strip(), v.strip()
            if k not in SPEC_KEYS + FIELD_KEYS:
                raise ConfigError(f"data spec {spec!r}: unknown key {k!r}{suggest(k, SPEC_KEYS + FIELD_KEYS)}; "
                                  f"keys: {', '.join(SPEC_KEYS)}, or a field mapping FIELD=COLUMN with FIELD one of "
                                  f"{', '.join(FIELD_KEYS)}")
            if not v:
                raise ConfigError(f"data spec {spec!r}: {k}= needs a value")
            opts[k] = v
    if not source:
        raise ConfigError(f"data spec {spec!r}: no dataset name or file before ':'")
    kw: dict[str, Any] = {}
    try:
        if "max_samples" in opts:
            kw["max_samples"] = int(opts["max_samples"])
            if kw["max_samples"] < 1:
                raise ValueError
        if "fraction" in opts:
            kw["fraction"] = float(opts["fraction"])
            if not 0 < kw["fraction"] <= 1:
                raise ValueError
        if "shuffled_copies" in opts:
            kw["shuffled_copies"] = int(opts["shuffled_copies"])
            if kw["shuffled_copies"] < 1:
                raise ValueError
        if "weight" in opts:
            kw["weight"] = float(opts["weight"])
            if not (kw["weight"] > 0 and math.isfinite(kw["weight"])):
                raise ValueError
    except ValueError:
        raise ConfigError(f"data spec {spec!r}: bad value; max_samples and shuffled_copies are integers "
                          ">= 1, fraction is in (0, 1], weight is a positive number") from None
    if "format" in opts:
        if opts["format"] not in FORMATS:
            raise ConfigError(f"data spec {spec!r}: unknown format {opts['format']!r}"
                              f"{suggest(opts['format'], FORMATS)}; formats: {', '.join(FORMATS)}")
        kw["format"] = opts["format"]
    fields = tuple((k, v) for k, v in opts.items() if k in FIELD_KEYS)
    if fields:
        kw["fields"] = fields
    return DataSpec(source=source, **kw)


def with_weights(specs: Sequence[str | DataSpec], weights: Sequence[float] | None) -> list[DataSpec]:
    """Attach mixing ``weights`` (one per spec) to ``specs``; None leaves them unchanged.

    Raises:
        ConfigError: wrong number of weights or a non-positive weight.
    """
    parsed = [parse_data_spec(s) for s in specs]
    if weights is None:
        return parsed
    if len(weights) != len(parsed):
        raise ConfigError(f"{len(weights)} mixing weights given for {len(parsed)} datasets; give one per --data")
    out = []
    for s, w in zip(parsed, weights):
        if not (float(w) > 0 and math.isfinite(float(w))):
            raise ConfigError(f"mixing weight {w} for {s.source}: must be a positive number")
        out.append(replace(s, weight=float(w)))
    return out
