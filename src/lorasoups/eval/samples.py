"""The folder of one evaluated task, ``<out>/<task>/``: ``results.json`` (the evaluation document
restricted to the task: its metrics and the run's options, model and provenance) and
``samples.jsonl``, one JSON object per evaluated item.

Fields: ``id``, ``prompt``, ``completion`` (None when not generated), ``extracted`` (answer or
program), ``status`` (execution status or extraction outcome), ``gold``, ``scores`` (per-item metric
values, the inputs of every mean in ``results.json``), ``nll`` (gold / control likelihoods).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError

REQUIRED = ("id", "completion")
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"


def samples_path(out: str | Path, task: str) -> Path:
    """``out/<task>/samples.jsonl``: the per-item records of ``task`` in an evaluation folder."""
    return Path(out) / task / SAMPLES_FILE


def write_task_folder(folder: str | Path, results: dict[str, Any], records: Iterable[dict[str, Any]]) -> None:
    """Write one task's ``results.json`` and ``samples.jsonl`` into ``folder`` (created; call it
    inside the output's :func:`lorasoups.paths.atomic_dir`)."""
    folder = Path(folder)
    write_samples(folder / SAMPLES_FILE, records)
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_samples(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSON lines (non-finite floats become null; lone surrogates in strings become ``?``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(_finite(r), ensure_ascii=False) + "\n")


def _finite(x: Any) -> Any:
    """Non-finite floats -> None; strings made UTF-8-safe (lone surrogates replaced)."""
    if isinstance(x, str):
        return x.encode("utf-8", "replace").decode("utf-8")
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {_finite(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """Read a samples file written by :func:`write_samples`.

    Raises:
        DataError: missing file, a line that is not valid JSON or not an object, or a record
            without ``id`` / ``completion``; the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"samples file {path} not found")
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"samples file {path}: cannot read: {e}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"samples file {path}: line {i} is not valid JSON ({e.msg}); "
                            "the file is corrupt or truncated — re-run the evaluation") from None
        if not isinstance(rec, dict):
            raise DataError(f"samples file {path}: line {i} is not a JSON object")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise DataError(f"samples file {path}: line {i} lacks field(s) {', '.join(missing)}")
        out.append(rec)
    if not out:
        raise DataError(f"samples file {path} is empty")
    return out
