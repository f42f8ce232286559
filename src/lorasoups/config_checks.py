"""Checks of an experiment config's parts against the declared option specs (:mod:`lorasoups.spec`).

Method parameters are checked by the method's registered spec (``MethodInfo.options``; closed-form
merges also take :class:`~lorasoups.merge_options.MergeRunOptions`), training options by the SFT
options, evaluation options by :class:`~lorasoups.eval.options.EvalOptions`, data specs by
:func:`lorasoups.train.data.parse_data_spec`. Every check returns problems as lines
``"<path>: <problem>"``; nothing is loaded or run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .config_load import deep_merge
from .errors import ConfigError, LorasoupsError
from .registry import suggest
from .spec import Spec

# Methods the runner provides itself (not composition methods in the registry).
BUILTIN_METHODS = {"base": "the base model alone, no adapter", "skill": "one skill LoRA alone"}
# Arguments the runner supplies itself; a config may not set them.
RUNNER_KEYS = {"base", "adapters", "data", "out", "data_dir", "overwrite", "progress", "resume", "callbacks",
               "keep_checkpoints"}


@dataclass
class Known:
    """Names a config is checked against. :func:`known_names` builds it from the registries; tests
    may pass their own.

    Attributes:
        tasks: task name -> its metric names (an empty set: metrics not checked).
        datasets: catalogue dataset names (None: not checked).
    """

    tasks: dict[str, set[str]]
    datasets: set[str] | None = None


def known_names() -> Known:
    """Tasks (with their metrics) and datasets from the live registries."""
    from .datasets import DATASETS
    from .eval.registry import load_tasks

    return Known({n: set(getattr(t, "metrics", None) or ()) for n, t in load_tasks().items()},
                 set(DATASETS.names()))


class Problems:
    """Collected problems, one line each, in order, without repeats."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.extend([f"{path}: {msg}" if path else msg])

    def extend(self, lines: Iterable[str]) -> None:
        self.items.extend(x for x in lines if x not in self.items)

    def keys(self, path: str, mapping: Mapping[str, Any], allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for k in mapping:
            if k not in allowed:
                self.add(path, f"unknown key {k!r}{suggest(str(k), allowed)}; allowed: {', '.join(sorted(allowed))}")


def fmt(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def as_mapping(p: Problems, path: str, v: Any, none_ok: bool = True) -> dict[str, Any]:
    if v is None and none_ok:
        return {}
    if not isinstance(v, Mapping):
        p.add(path, f"must be a mapping, got {type(v).__name__} {fmt(v)}")
        return {}
    return dict(v)


def as_str_list(p: Problems, path: str, v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return list(v)
    p.add(path, f"must be a string or a list of strings, got {fmt(v)}")
    return []


def layered(check: Callable[[Mapping[str, Any], str], list[str]], defaults: Mapping[str, Any],
            own: Mapping[str, Any], path: str, defaults_path: str) -> list[str]:
    """Problems of ``defaults`` overridden by ``own`` (as the step will see them); a problem of an
    option that comes from the defaults is reported at ``defaults_path`` (once, not per user), and
    so is a bad default that every user overrides."""
    out = [x for x in check(defaults, defaults_path) if x.startswith(defaults_path + ".")]
    for line in check(deep_merge(dict(defaults), dict(own)), path):
        head, sep, rest = line.partition(": ")
        key = head[len(path) + 1:].split(".")[0] if head.startswith(path + ".") else None
        if sep and key and key not in own and key in defaults:
            line = f"{defaults_path}.{head[len(path) + 1:]}: {rest}"
        out.append(line)
    return out


# ---------------------------------------------------------------------------------- methods
@functools.lru_cache(maxsize=None)
def _merge_spec(spec: type[Spec]) -> type[Spec]:
    """A merge method's options plus the merge run's (weights, rank, ...), as one spec."""
    from .merge_options import MergeRunOptions

    return type(spec.__name__, (spec, MergeRunOptions), {"__module__": spec.__module__})


def method_problems(info: Any, params: Mapping[str, Any], path: str) -> list[str]:
    """Problems of a method's config ``params`` (names, types, ranges, choices) from its spec.

    Raises:
        ValueError: the method was registered without ``options=`` (every method declares its spec).
    """
    if info.options is None:
        raise ValueError(f"method {info.name!r} is registered without an option spec")
    spec = _merge_spec(info.options) if info.kind == "merge" else info.options
    return spec.problems(params, path)


# ---------------------------------------------------------------------------------- training
def train_problems(opts: Mapping[str, Any], path: str) -> list[str]:
    """Problems of ``train_lora`` options (a config's ``train`` block and ``skills.<s>.train``)."""
    from .train.options import TrainOptions

    runner = {"device", "threads"}
    return TrainOptions.problems({k: v for k, v in opts.items() if k not in runner}, path)


# ---------------------------------------------------------------------------------- evaluation
def eval_problems(opts: Mapping[str, Any], path: str) -> list[str]:
    """Problems of ``evaluate`` options."""
    from .eval.options import RUNNER_ONLY, EvalOptions

    return [f"{path}.{k}: set by the runner, not by a config" for k in opts if k in RUNNER_ONLY] + \
        EvalOptions.problems({k: v for k, v in opts.items() if k not in RUNNER_ONLY}, path)


def task_file(p: Problems, path: str, tname: Any, source: str | None, known: Known) -> Any:
    """A task file spec (``my_target.jsonl[:key=value,...]``, relative to the config file's folder)
    registered as a task: its name (added to ``known``); other values unchanged."""
    from .eval.tasks.custom import is_task_file_spec

    if not isinstance(tname, str) or tname in known.tasks or not is_task_file_spec(tname):
        return tname
    from .eval.registry import register_file_task

    try:
        task = register_file_task(tname, base_dir=Path(source).parent if source else None)
    except LorasoupsError as e:
        p.add(path, str(e))
        return tname
    known.tasks[task.name] = set(task.metrics)
    return task.name


def label_list_problems(rep: Mapping[str, Any], labels: list[str]) -> list[str]:
    """Problems of ``report.compare_to`` (method labels) and ``report.forest_columns`` (column labels)."""
    p = Problems()
    col_labels = [c.get("label") for c in (rep.get("columns") or []) if isinstance(c, Mapping)]
    for key, allowed, what in (("compare_to", labels, "a method of this config"),
                               ("forest_columns", col_labels, "a label of report.columns")):
        got = rep.get(key)
        if got is None:
            continue
        if not isinstance(got, list) or not all(isinstance(x, str) for x in got):
            p.add(f"report.{key}", f"must be a list of {'method' if key == 'compare_to' else 'column'} labels, got {fmt(got)}")
            continue
        for x in got:
            if x not in allowed:
                p.add(f"report.{key}", f"{x!r} is not {what}{suggest(x, allowed)}")
    return p.items


# ---------------------------------------------------------------------------------- data, base
def data_spec_problems(spec: str, path: str, known: Known) -> list[str]:
    """Problems of one training data spec ``name[:key=value,...]``: the dataset or file, the keys
    and their values (``max_samples`` ≥ 1, ``fraction`` in (0, 1], ``weight`` > 0, ``format``)."""
    from .train.data import parse_data_spec

    out = []
    name = spec.partition(":")[0]
    looks_like_file = "/" in name or name.endswith((".json", ".jsonl", ".txt", ".csv", ".tsv", ".parquet", ".md"))
    if not looks_like_file and known.datasets is not None and name not in known.datasets:
        out.append(f"{path}: unknown dataset {name!r}{suggest(name, list(known.datasets))} (a catalogue name or a file path)")
    if looks_like_file and not Path(name).expanduser().exists():
        out.append(f"{path}: data file {name} does not exist")
    try:
        parse_data_spec(spec)
    except ConfigError as e:
        out.append(f"{path}: {e}")
    return out


def base_problems(base: Any) -> list[str]:
    """Problems of the ``base`` model: an embedded name, a model folder or a hub id."""
    if not isinstance(base, str) or not base:
        return [f"base: must be a model name or folder, got {fmt(base)}"]
    from .models import EMBEDDED

    q = Path(base).expanduser()
    if base in EMBEDDED or (base.count("/") == 1 and not base.startswith((".", "/", "~")) and not q.exists()):
        return []  # embedded or a hub id
    if q.exists():
        return [] if (q / "config.json").is_file() else [f"base: {base} is not a Hugging Face model folder (no config.json)"]
    return [f"base: {base!r} is not an embedded model{suggest(base, list(EMBEDDED))}, a model folder or a hub id "
            f"(embedded: {', '.join(sorted(EMBEDDED))})"]
