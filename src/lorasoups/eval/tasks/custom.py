"""Your own target data as an evaluation task: a JSONL (or JSON, CSV, Parquet) file of records.

A *task file spec* is a path, optionally followed by ``:key=value,...`` options (the same syntax as
training data specs, :func:`lorasoups.train.data.parse_data_spec`)::

    my_target.jsonl        my_target.csv:prompt=question,answers=gold,mode=numeric

Record fields (the first that is present wins):

- prompt: ``prompt``; else ``instruction`` with an optional ``input`` (rendered in the training
  format, :func:`lorasoups.prompts.render_prompt`, so a LoRA trained on the same fields sees the
  same prompt).
- gold answers: ``answers`` (a list or a string), else ``answer``, else ``output``, else
  ``completion`` (a string or a list). Several golds: text scores take the best over the golds
  (SQuAD convention); the *first* gold is the response whose likelihood is measured.
- field mapping: ``prompt=COL``, ``instruction=COL``, ``input=COL``, ``answers=COL`` (or
  ``answer=``/``output=``/``completion=``) read the field from the column ``COL``.

Metrics (per item, then mean ± standard error, :mod:`lorasoups.eval.metrics`):

- ``mode=text`` (default): ``exact_match`` and ``f1`` (SQuAD normalisation), ``rouge_l``
  (``rouge-score`` package) of the completion after removing a leading ``The answer is``.
  Primary: ``f1`` (higher is better).
- ``mode=numeric``: ``accuracy`` = the completion's number (the one after a ``####``, ``The answer
  is`` or ``\\boxed{}`` marker, :func:`lorasoups.eval.extract.strict_number`, else the last number,
  :func:`~lorasoups.eval.extract.last_number`) equals
  the gold number (parsed with :func:`~lorasoups.eval.extract.parse_number`, tolerance 1e-3);
  ``exact_match``, ``f1`` and ``rouge_l`` are reported as well. Primary: ``accuracy``.
- always (when the file has a gold answer): ``nll_gold``, ``nll_control``, ``nll_gap``,
  ``gold_preferred`` (:mod:`lorasoups.eval.runner`; the control is another item's first gold).

The task's name is the file's stem (``my_target``); its version carries a checksum of the file and
the options, so cached experiment results are recomputed when the file changes.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ..extract import last_number, numbers_close, parse_number, strict_number
from ..metrics import exact_match, rouge_l, token_f1
from ..registry import Item, Task
from .qa import clean_prediction

#: File suffixes recognised as task files (``--task PATH``).
TASK_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
FIELD_KEYS = ("prompt", "instruction", "input", "answers", "answer", "output", "completion")
OPTION_KEYS = FIELD_KEYS + ("mode", "name", "max_new_tokens")
GOLD_FIELDS = ("answers", "answer", "output", "completion")
MODES = ("text", "numeric")

_KV = re.compile(r"^\s*[A-Za-z_]+\s*=\s*[^,]*$")


def split_task_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``PATH[:key=value,...]`` -> ``(PATH, {key: value})`` (no checks of the keys)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.strip() and all(_KV.match(p) for p in tail.split(",")):
        opts = {}
        for part in tail.split(","):
            k, _, v = part.partition("=")
            opts[k.strip()] = v.strip()
        return head.strip(), opts
    return spec.strip(), {}


def is_task_file_spec(spec: Any) -> bool:
    """True when ``spec`` names a task file (a known suffix, or an existing file)."""
    if not isinstance(spec, (str, Path)):
        return False
    path, _ = split_task_spec(str(spec))
    return Path(path).suffix.lower() in TASK_FILE_SUFFIXES or ("/" in path and Path(path).expanduser().is_file())


def _as_golds(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    if hasattr(v, "tolist"):  # numpy arrays from parquet list columns
        return _as_golds(v.tolist())
    s = str(v).strip()
    return [s] if s else []


class FileTask(Task):
    """A task read from a user's file (see the module docstring).

    Args:
        path: the file (JSONL, JSON list, CSV, TSV or Parquet).
        options: ``mode`` (``text`` | ``numeric``), ``name`` (default: the file stem),
            ``max_new_tokens``, and field mappings (``prompt=COL`` ...).

    Raises:
        ConfigError: an unknown option or mode.
        DataError: the file does not exist.
    """

    kind = "custom"
    default_shots = 0
    max_shots = 0
    max_new_tokens = 128

    def __init__(self, path: str | Path, options: dict[str, str] | None = None):
        opts = dict(options or {})
        bad = sorted(set(opts) - set(OPTION_KEYS))
        if bad:
            raise ConfigError(f"task file {path}: unknown option(s) {', '.join(bad)}; options: {', '.join(OPTION_KEYS)}")
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise DataError(f"task file {self.path} not found")
        self.mode = opts.pop("mode", "text")
        if self.mode not in MODES:
            raise ConfigError(f"task file {path}: mode must be text or numeric, got {self.mode!r}")
        self.name = opts.pop("name", None) or re.sub(r"[^A-Za-z0-9_.-]+", "_", self.path.stem)
        if "max_new_tokens" in opts:
            try:
                self.max_new_tokens = int(opts.pop("max_new_tokens"))
            except ValueError:
                raise ConfigError(f"task file {path}: max_new_tokens must be an integer") from None
        self.fields = {k: v for k, v in opts.items() if k in FIELD_KEYS}
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        sig = ",".join(f"{k}={v}" for k, v in sorted(self.fields.items()))
        self.version = f"1+{digest}" + (f"+{hashlib.sha256(sig.encode()).hexdigest()[:6]}" if sig else "")
        self.description = f"{self.path} ({self.mode} answers)"
        if self.mode == "numeric":
            self.score_metrics = ("accuracy", "exact_match", "f1", "rouge_l")
            self.primary_metrics = ("accuracy",)
        else:
            self.score_metrics = ("exact_match", "f1", "rouge_l")
            self.primary_metrics = ("f1",)

    def _get(self, rec: dict[str, Any], key: str, where: str) -> Any:
        col = self.fields.get(key)
        if col is None:
            return rec.get(key)
        if col not in rec:
            raise DataError(f"{where}: mapped field {key}={col} but the record has no {col!r} "
                            f"(fields: {', '.join(sorted(rec))})")
        return rec[col]

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        from ...datasets import read_records

        recs = read_records(self.path)
        items: list[Item] = []
        for i, r in enumerate(recs):  # every record is checked, also beyond ``limit``
            where = f"{self.path}: record {i + 1}"
            prompt = self._get(r, "prompt", where)
            inp = None
            if prompt is None:
                prompt = self._get(r, "instruction", where)
                inp = self._get(r, "input", where)
            if prompt is None or not str(prompt).strip():
                raise DataError(f"{where}: no prompt; expected a 'prompt' or 'instruction' field or a mapping "
                                f"such as :prompt=COLUMN (fields: {', '.join(sorted(r))})")
            golds: list[str] = []
            for g in GOLD_FIELDS:
                golds = _as_golds(self._get(r, g, where))
                if golds:
                    break
            if not golds:
                raise DataError(f"{where}: no gold answer; expected one of {', '.join(GOLD_FIELDS)} or a mapping "
                                f"such as :answers=COLUMN (fields: {', '.join(sorted(r))})")
            gold: Any = golds
            meta: dict[str, Any] = {}
            if self.mode == "numeric":
                num = parse_number(golds[0])
                if num is None:
                    num = last_number(golds[0])
                if num is None:
                    raise DataError(f"{where}: mode=numeric but the gold answer {golds[0]!r} has no number")
                meta["gold_number"] = num
            inp_s = str(inp).strip() if inp is not None and str(inp).strip() else None
            items.append(Item(f"{self.name}-{i}", str(prompt).strip(), inp_s, gold, golds[0], meta))
        return items if limit is None else items[:limit]

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        pred = clean_prediction(completion)
        golds = list(item.gold)
        # the best score over the gold answers (SQuAD convention)
        s = {k: max((fn(pred, g) for g in golds), default=0.0)
             for k, fn in (("exact_match", exact_match), ("f1", token_f1), ("rouge_l", rouge_l))}
        out: dict[str, Any] = {"extracted": pred, "gold": golds, "status": "empty" if not pred else "answered"}
        if self.mode == "numeric":
            num = strict_number(completion)
            if num is None:
                num = last_number(completion)
            s = {"accuracy": float(numbers_close(num, item.meta["gold_number"])), **s}
            out["extracted"] = num
            out["status"] = "no number" if num is None else "answered"
        out["scores"] = s
        return out
