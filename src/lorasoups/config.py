"""Experiment configs: YAML + ``include`` + presets + ``key=value`` overrides -> frozen dataclasses.

A config file declares one skill-composition experiment (see ``configs/*.yaml`` and the README
section "Experiments")::

    name: math_code
    base: smollm2-135m
    seed: 0
    train: {r: 16, lora_alpha: 32, lr: 2.0e-4, max_steps: 100}     # defaults for every skill LoRA
    skills:
      math: {data: ["gsm8k:max_samples=300"]}
      code: {data: ["codealpaca:max_samples=300"], train: {cutoff_len: 384}}
    methods:                       # label -> {method, params, skills, skill, data, ...}
      base: {}                     # `method` defaults to the label
      math: {method: skill, skill: math}   # or `skill:math: {}`
      ties: {params: {density: 0.5}}
      cat_static: {method: cat, params: {no_train: true, init: uniform}}
    eval:
      options: {batch_size: 8}     # defaults for every task
      tasks:                       # label -> {task, role, skill, <evaluate options>}
        gsm_hard: {role: target, limit: 200}
    report:
      columns: [{task: gsm_hard, metric: gold_nll}]
    presets:
      smoke: {train: {max_steps: 5}}           # deep-merged over the file
      cpu: {extends: smoke, ...}

Resolution order: the file (after its ``include`` files, which it overrides) -> the preset (and
the presets it ``extends``) -> command-line ``key.path=value`` overrides (values parsed as YAML).
In mappings that are merged, a value ``~`` (null) *sets* None; to drop a method or task from a
preset, give it ``enabled: false``.

Validation happens once, before any work, and reports every problem together in one
:class:`~lorasoups.errors.ConfigError`: unknown keys (with "did you mean"), unknown methods, tasks,
skills, datasets and presets, method parameters of the wrong name or type (checked against the
keyword-only parameters registered in :mod:`lorasoups.methods`), training and evaluation options
(checked against the signatures of ``train_lora`` and ``evaluate`` where those declare them).
"""

from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from .errors import ConfigError, LorasoupsError
from .registry import suggest

# ----------------------------------------------------------------------------------------------
# YAML loading
# ----------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``2E5`` as floats (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML text (safe loader, ``1e-4`` read as a float).

    Raises:
        ConfigError: invalid YAML, naming ``where`` and the line.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}:{loc} invalid YAML: {getattr(e, 'problem', None) or e}") from None


def deep_merge(base: Any, over: Any) -> Any:
    """Return ``base`` with ``over`` merged in: mappings merge key by key (recursively), anything
    else (lists included) is replaced. Inputs are not modified."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in over.items():
            out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and its ``include`` files (paths relative to the including file; later
    includes override earlier ones, the file itself overrides them all).

    Raises:
        ConfigError: missing file, invalid YAML, not a mapping, or an include cycle.
    """
    p = Path(path).expanduser().resolve()
    if p in _seen:
        raise ConfigError(f"{p}: include cycle: " + " -> ".join(str(s) for s in (*_seen, p)))
    if not p.is_file():
        where = f" (included from {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file {p} not found{where}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a YAML mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        raise ConfigError(f"{p}: 'include' must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for i in incs:
        merged = deep_merge(merged, load_raw(p.parent / i, (*_seen, p)))
    return deep_merge(merged, data)


def resolve_preset(raw: Mapping[str, Any], preset: str | None, where: str = "config") -> dict[str, Any]:
    """Apply preset ``preset`` (following ``extends``) to ``raw``; drop the ``presets`` table.

    Raises:
        ConfigError: unknown preset (with suggestions), a preset that is not a mapping, an
            ``extends`` cycle.
    """
    raw = dict(raw)
    presets = raw.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"{where}: 'presets' must be a mapping of name -> overrides")
    if preset is None:
        return raw
    chain: list[str] = []
    name: str | None = preset
    while name is not None:
        if name in chain:
            raise ConfigError(f"{where}: preset 'extends' cycle: {' -> '.join(chain + [name])}")
        if name not in presets:
            raise ConfigError(f"{where}: unknown preset {name!r}{suggest(name, list(presets))}; "
                              f"presets: {', '.join(sorted(presets)) or '(none)'}")
        body = presets[name]
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: preset {name!r} must be a mapping")
        chain.append(name)
        name = body.get("extends")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where}: preset {chain[-1]!r}: 'extends' must be a preset name")
    out = raw
    for n in reversed(chain):
        body = {k: v for k, v in (presets[n] or {}).items() if k != "extends"}
        out = deep_merge(out, body)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML
    (``3`` -> int, ``1e-4`` -> float, ``[a, b]`` -> list, ``true`` -> bool, ``~`` -> None).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, _, val = text.partition("=")
    parts = [k.strip() for k in key.strip().split(".")]
    if not key.strip() or any(not k for k in parts):
        raise ConfigError(f"override {text!r}: empty key")
    value = parse_yaml(val, f"override {text!r}") if val.strip() else ""
    return parts, value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw config (intermediate mappings are created).

    Raises:
        ConfigError: a path that goes through a value that is not a mapping.
    """
    out = copy.deepcopy(dict(raw))
    for ov in overrides:
        parts, value = parse_override(ov)
        node: Any = out
        for i, k in enumerate(parts[:-1]):
            if k not in node or node[k] is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        cur = node.get(parts[-1])
        node[parts[-1]] = deep_merge(cur, value) if isinstance(cur, dict) and isinstance(value, dict) else value
    return out


# ----------------------------------------------------------------------------------------------
# Frozen config objects
# ----------------------------------------------------------------------------------------------


def _freeze(x: Any) -> Any:
    if isinstance(x, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def thaw(x: Any) -> Any:
    """Turn frozen mappings/tuples back into plain dicts/lists (JSON/YAML-serialisable)."""
    if isinstance(x, Mapping):
        return {k: thaw(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [thaw(v) for v in x]
    return x


@dataclass(frozen=True)
class SkillConfig:
    """One skill: its training data specs and the resolved ``train_lora`` options."""

    name: str
    data: tuple[str, ...]
    train: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class MethodConfig:
    """One row of the results table.

    Attributes:
        label: row name (unique).
        method: ``base``, ``skill`` or a name registered in :mod:`lorasoups.methods`.
        kind: ``reference`` (base / skill), or the registered kind (merge, learned, search,
            routed, trained).
        skills: skill names whose LoRAs are combined (composites), or the one skill (``skill``).
        params: method parameters (for ``data_mix``: ``train_lora`` options over ``train``).
        data: training data specs for learned/search/routed/trained methods (default: the
            skills' data).
        description: one line for the report.
    """

    label: str
    method: str
    kind: str
    skills: tuple[str, ...]
    params: Mapping[str, Any]
    data: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class TaskConfig:
    """One evaluation task run with its options.

    Attributes:
        label: name in the results (unique; defaults to the task name).
        task: the registered task name.
        role: ``target`` (composition target) or ``skill`` (a single skill's own task) or ``other``.
        skill: the skill this task measures (``role: skill``).
        options: resolved ``evaluate`` options (eval.options merged with the task's own).
    """

    label: str
    task: str
    role: str
    skill: str | None
    options: Mapping[str, Any]


@dataclass(frozen=True)
class ColumnConfig:
    """A table column: one metric of one task label."""

    label: str
    task: str
    metric: str
    better: str  # "higher" | "lower" | "none" (a control column: no best marked)
    target: bool = False


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment. ``raw`` is the resolved mapping (preset and overrides applied)."""

    name: str
    description: str
    base: str
    seed: int
    data_dir: str | None
    allow_code_execution: bool
    skills: Mapping[str, SkillConfig]
    methods: tuple[MethodConfig, ...]
    tasks: tuple[TaskConfig, ...]
    columns: tuple[ColumnConfig, ...]
    preset: str | None
    source: str | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def method(self, label: str) -> MethodConfig:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``results.json`` records)."""
        return thaw(self.raw)


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------

TOP_KEYS = {"name", "description", "base", "seed", "data_dir", "allow_code_execution", "train",
            "skills", "methods", "eval", "report", "presets", "include", "notes", "substitutes"}
SKILL_KEYS = {"data", "train", "description"}
METHOD_KEYS = {"method", "params", "skills", "skill", "data", "description", "enabled"}
EVAL_KEYS = {"options", "tasks"}
TASK_KEYS = {"task", "role", "skill", "enabled", "options"}
REPORT_KEYS = {"columns", "title", "compare_to", "forest_columns"}
COLUMN_KEYS = {"label", "task", "metric", "better", "target"}
ROLES = ("target", "skill", "other")

# Methods the runner provides itself (not composition methods in the registry).
BUILTIN_METHODS = {
    "base": "the base model alone, no adapter",
    "skill": "one skill LoRA alone",
}
# Keyword arguments of merge_adapters that a merge method's params may also carry (used when the
# merge driver is not installed; otherwise read from its signature minus MERGE_DRIVER_SKIP).
MERGE_DRIVER_KEYS: dict[str, Any] = {"weights": list, "rank": typing.Optional[int]}
MERGE_DRIVER_SKIP = {"params", "overwrite", "log", "base", "full", "allow_pickle"}
# Arguments the runner supplies itself; a config may not set them.
RUNNER_KEYS = {"base", "adapters", "data", "out", "data_dir", "overwrite", "progress", "resume", "callbacks",
               "keep_checkpoints"}

# ----------------------------------------------------------------------------------------------
# Type checking against signatures
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> bool:
    """Does ``value`` (plain YAML data) fit the annotation ``tp``? Unknown constructs pass.

    int is accepted for float; bool is not accepted for int/float; lists for sequences/tuples.
    """
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(check_value(value, a) for a in typing.get_args(tp))
    if origin in (list, tuple, set, frozenset) or (origin is not None and getattr(origin, "__name__", "") in ("Sequence", "Iterable", "Collection")):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 or (origin is tuple and len(set(args)) == 1 and args):
            return all(check_value(v, args[0]) for v in value)
        return True
    if origin in (dict,) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        return isinstance(value, Mapping)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if tp is dict:
        return isinstance(value, Mapping)
    if tp in (Path,) or getattr(tp, "__name__", "") in ("PathLike",):
        return isinstance(value, str)
    return True


def param_types(fn: Callable[..., Any] | None, names: Iterable[str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Expected type of each parameter: the annotation of ``fn`` when it resolves, else the type
    of the default (``None`` default -> anything)."""
    hints: dict[str, Any] = {}
    if fn is not None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward references: fall back to defaults
            hints = {}
    out: dict[str, Any] = {}
    for n in names:
        if n in hints:
            out[n] = hints[n]
            continue
        d = defaults.get(n, inspect.Parameter.empty)
        if d is inspect.Parameter.empty or d is None:
            out[n] = Any
        elif isinstance(d, bool):
            out[n] = bool
        elif isinstance(d, float):
            out[n] = float
        elif isinstance(d, int):
            out[n] = int
        elif isinstance(d, str):
            out[n] = str
        elif isinstance(d, (list, tuple)):
            out[n] = list
        elif isinstance(d, dict):
            out[n] = dict
        else:
            out[n] = Any
    return out


def _fmt(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


@dataclass
class Schemas:
    """What validation checks against. Built from the live registries by :func:`live_schemas`;
    tests may pass their own.

    Attributes:
        methods: method name -> (kind, params {name: default}, fn or None).
        tasks: registered task names.
        train_options: ``train_lora`` option name -> expected type (None = not known: anything goes).
        eval_options: ``evaluate`` option name -> expected type (None = not known).
        datasets: catalogue dataset names (None = do not check).
        data_spec_keys: allowed ``:key=value`` keys of a data spec.
    """

    methods: dict[str, tuple[str, dict[str, Any], Callable[..., Any] | None]]
    tasks: set[str] | None
    train_options: dict[str, Any] | None = None
    eval_options: dict[str, Any] | None = None
    datasets: set[str] | None = None
    data_spec_keys: set[str] = field(default_factory=lambda: {"max_samples", "fraction", "weight", "format",
                                                              # field mappings (train/data.py FIELD_KEYS)
                                                              "instruction", "input", "output", "prompt",
                                                              "completion", "messages", "question", "answer",
                                                              "code", "context", "answers"})
    task_metrics: dict[str, set[str]] | None = None
    merge_driver: dict[str, Any] = field(default_factory=lambda: dict(MERGE_DRIVER_KEYS))
    descriptions: dict[str, str] = field(default_factory=dict)
    train_check: Callable[[dict[str, Any]], list[str]] | None = None
    eval_check: Callable[[dict[str, Any]], list[str]] | None = None
    notes: list[str] = field(default_factory=list)


def _options_from(fn: Callable[..., Any], skip: Iterable[str]) -> dict[str, Any] | None:
    """Named keyword parameters of ``fn`` (minus ``skip``) -> type; None when it only takes ``**options``
    and declares no option table (``OPTIONS`` / ``DEFAULTS`` dict or an ``*Options`` dataclass)."""
    import dataclasses

    sig = inspect.signature(fn)
    skip = set(skip)
    named = {n: p.default for n, p in sig.parameters.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in skip}
    has_var = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if has_var:
        mod = inspect.getmodule(fn)
        table = None
        for attr in ("OPTIONS", "DEFAULTS", "DEFAULT_OPTIONS", "OPTION_DEFAULTS"):
            t = getattr(mod, attr, None)
            if isinstance(t, Mapping):
                table = dict(t)
                break
        if table is None:
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if dataclasses.is_dataclass(obj) and obj.__name__.endswith("Options") and obj.__module__ == mod.__name__:
                    table = {}
                    hints = {}
                    try:
                        hints = typing.get_type_hints(obj)
                    except Exception:
                        pass
                    for f in dataclasses.fields(obj):
                        table[f.name] = hints.get(f.name, Any)
                    return {**param_types(fn, named, named), **table}
        if table is None:
            return None
        return {**param_types(fn, named, named), **param_types(None, table, table)}
    return param_types(fn, named, named)


def live_schemas() -> Schemas:
    """Schemas from the installed pieces: methods registry, task registry, ``train_lora`` and
    ``evaluate`` signatures, dataset catalogue. A piece that is not installed yet leaves its part
    unchecked and adds a note (so ``validate`` says what it could not check)."""
    from .datasets import DATASETS
    from .methods import load_methods

    notes: list[str] = []
    methods: dict[str, tuple[str, dict[str, Any], Callable[..., Any] | None]] = {}
    descriptions: dict[str, str] = {}
    for name, info in load_methods().items():
        methods[name] = (info.kind, dict(info.params), info.fn)
        descriptions[name] = info.description
    tasks: set[str] | None
    task_metrics: dict[str, set[str]] | None = None
    try:
        from .eval.registry import load_tasks

        reg = load_tasks()
        tasks = set(reg.names())
        task_metrics = {}
        for n, t in reg.items():
            ms = getattr(t, "metrics", None)
            if ms:
                task_metrics[n] = set(ms)
    except ModuleNotFoundError:
        tasks = None
        notes.append("evaluation tasks not checked (lorasoups.eval is not installed)")
    train_options = None
    train_check = eval_check = None
    try:
        from .train.sft import make_options, train_lora

        def train_check(opts: dict[str, Any]) -> list[str]:
            return _value_problems(make_options, opts)

        train_options = _options_from(train_lora, RUNNER_KEYS)
        if train_options is not None:
            train_options = {k: v for k, v in train_options.items() if k not in RUNNER_KEYS}
    except ModuleNotFoundError:
        notes.append("training options not checked (lorasoups.train.sft is not installed)")
    eval_options = None
    try:
        from .eval.runner import evaluate, resolve_options

        def eval_check(opts: dict[str, Any]) -> list[str]:
            return _value_problems(lambda **o: resolve_options(o), opts)

        eval_options = _options_from(evaluate, RUNNER_KEYS | {"adapter", "tasks"})
        if eval_options is not None:
            eval_options = {k: v for k, v in eval_options.items()
                            if k not in RUNNER_KEYS | {"adapter", "tasks", "rescore", "generator", "tokenizer"}}
    except ModuleNotFoundError:
        notes.append("evaluation options not checked (lorasoups.eval.runner is not installed)")
    merge_driver = dict(MERGE_DRIVER_KEYS)
    try:
        from .merge.driver import merge_adapters

        sig = inspect.signature(merge_adapters)
        kw = {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n not in MERGE_DRIVER_SKIP}
        merge_driver = param_types(merge_adapters, kw, kw)
    except ModuleNotFoundError:
        notes.append("merge driver options not checked (lorasoups.merge.driver is not installed)")
    return Schemas(methods=methods, tasks=tasks, train_options=train_options, eval_options=eval_options,
                   datasets=set(DATASETS.names()), task_metrics=task_metrics, merge_driver=merge_driver,
                   descriptions=descriptions, train_check=train_check, eval_check=eval_check, notes=notes)


def _file_task(p: Any, path: str, tname: Any, source: str | None, s: Schemas) -> Any:
    """A task file spec (``my_target.jsonl[:key=value,...]``, relative to the config file's folder)
    registered as a task: its name (added to the schemas); other values unchanged. Problems with
    the file are added to ``p``."""
    try:
        from .eval.tasks.custom import is_task_file_spec
    except ModuleNotFoundError:
        return tname
    if not isinstance(tname, str) or (s.tasks is not None and tname in s.tasks) or not is_task_file_spec(tname):
        return tname
    from .eval.registry import register_file_task

    try:
        task = register_file_task(tname, base_dir=Path(source).parent if source else None)
    except LorasoupsError as e:
        p.add(path, str(e))
        return tname
    if s.tasks is not None:
        s.tasks.add(task.name)
    if s.task_metrics is not None:
        s.task_metrics[task.name] = set(task.metrics)
    return task.name


def _value_problems(check: Callable[..., Any], opts: dict[str, Any]) -> list[str]:
    """Run a piece's own option validation (``make_options`` / ``resolve_options``) and return its
    problems (empty when the options are fine)."""
    try:
        check(**opts)
    except ConfigError as e:
        return [str(x) for x in e.problems]
    except (TypeError, ValueError) as e:
        return [str(e)]
    return []


class _Problems:
    def __init__(self, where: str):
        self.where = where
        self.items: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append(f"{path}: {msg}" if path else msg)

    def keys(self, path: str, mapping: Mapping[str, Any], allowed: Iterable[str], what: str = "key") -> None:
        allowed = list(allowed)
        for k in mapping:
            if k not in allowed:
                self.add(path, f"unknown {what} {k!r}{suggest(str(k), allowed)}; allowed: {', '.join(sorted(allowed))}")


def _as_mapping(p: _Problems, path: str, v: Any, none_ok: bool = True) -> dict[str, Any]:
    if v is None and none_ok:
        return {}
    if not isinstance(v, Mapping):
        p.add(path, f"must be a mapping, got {type(v).__name__} {_fmt(v)}")
        return {}
    return dict(v)


def _as_str_list(p: _Problems, path: str, v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return list(v)
    p.add(path, f"must be a string or a list of strings, got {_fmt(v)}")
    return []


def _check_options(p: _Problems, path: str, opts: Mapping[str, Any], schema: Mapping[str, Any] | None, what: str) -> None:
    if schema is None:
        return
    for k, v in opts.items():
        if k not in schema:
            p.add(path, f"unknown {what} {k!r}{suggest(str(k), list(schema))}; known: {', '.join(sorted(schema))}")
        elif not check_value(v, schema[k]):
            p.add(f"{path}.{k}", f"expected {_type_name(schema[k])}, got {type(v).__name__} {_fmt(v)}")


def _check_values(p: _Problems, path: str, opts: Mapping[str, Any], schema: Mapping[str, Any] | None,
                  check: Callable[[dict[str, Any]], list[str]] | None) -> None:
    """Value checks of the piece that consumes ``opts`` (ranges, choices), on the known, well-typed
    options only (unknown names and wrong types are reported separately)."""
    if check is None:
        return
    ok = {k: v for k, v in opts.items() if schema is None or (k in schema and check_value(v, schema[k]))}
    for msg in check(ok):
        if msg not in [x.split(": ", 1)[-1] for x in p.items]:
            p.add(path, msg)


def _check_data_spec(p: _Problems, path: str, spec: str, s: Schemas) -> None:
    name, _, rest = spec.partition(":")
    looks_like_file = "/" in name or name.endswith((".json", ".jsonl", ".txt", ".csv", ".tsv", ".parquet", ".md"))
    if not looks_like_file and s.datasets is not None and name not in s.datasets:
        p.add(path, f"unknown dataset {name!r}{suggest(name, list(s.datasets))} (a catalogue name or a file path)")
    if looks_like_file and not Path(name).expanduser().exists():
        p.add(path, f"data file {name} does not exist")
    if rest:
        for kv in rest.split(","):
            k, eq, v = kv.partition("=")
            if not eq:
                p.add(path, f"data spec option {kv!r} is not key=value")
            elif k not in s.data_spec_keys:
                p.add(path, f"unknown data spec option {k!r}{suggest(k, list(s.data_spec_keys))}; "
                            f"allowed: {', '.join(sorted(s.data_spec_keys))}")


def _check_base(p: _Problems, base: Any) -> None:
    if not isinstance(base, str) or not base:
        p.add("base", f"must be a model name or folder, got {_fmt(base)}")
        return
    from .models import EMBEDDED

    if base in EMBEDDED:
        return
    q = Path(base).expanduser()
    if q.exists():
        if not (q / "config.json").is_file():
            p.add("base", f"{base} is not a Hugging Face model folder (no config.json)")
        return
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):
        return  # hub id
    p.add("base", f"{base!r} is not an embedded model{suggest(base, list(EMBEDDED))}, a model folder or a hub id "
                  f"(embedded: {', '.join(sorted(EMBEDDED))})")


def build_config(raw: Mapping[str, Any], *, preset: str | None = None, source: str | None = None,
                 schemas: Schemas | None = None) -> ExperimentConfig:
    """Validate a resolved raw config (preset and overrides already applied) and freeze it.

    Raises:
        ConfigError: every problem found, one per line, in one message (``.problems`` lists them).
    """
    s = schemas or live_schemas()
    where = source or "config"
    p = _Problems(where)
    raw = dict(raw)
    p.keys("", raw, TOP_KEYS)

    name = raw.get("name") or (Path(source).stem if source else "experiment")
    if not isinstance(name, str):
        p.add("name", "must be a string")
        name = str(name)
    base = raw.get("base", "smollm2-135m")
    _check_base(p, base)
    seed = raw.get("seed", 0)
    if not check_value(seed, int):
        p.add("seed", f"expected int, got {_fmt(seed)}")
        seed = 0
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        p.add("data_dir", f"expected a folder path, got {_fmt(data_dir)}")
        data_dir = None
    ace = raw.get("allow_code_execution", False)
    if not isinstance(ace, bool):
        p.add("allow_code_execution", f"expected true/false, got {_fmt(ace)}")
        ace = False

    # skills ----------------------------------------------------------------------------
    train_defaults = _as_mapping(p, "train", raw.get("train"))
    _check_options(p, "train", train_defaults, s.train_options, "training option")
    skills_raw = _as_mapping(p, "skills", raw.get("skills"), none_ok=False)
    skills: dict[str, SkillConfig] = {}
    for sk, body in skills_raw.items():
        path = f"skills.{sk}"
        body = _as_mapping(p, path, body)
        p.keys(path, body, SKILL_KEYS)
        data = _as_str_list(p, f"{path}.data", body.get("data"))
        if not data:
            p.add(f"{path}.data", "no training data (give a dataset name or file, e.g. gsm8k:max_samples=300)")
        for i, spec in enumerate(data):
            _check_data_spec(p, f"{path}.data[{i}]", spec, s)
        tr = _as_mapping(p, f"{path}.train", body.get("train"))
        _check_options(p, f"{path}.train", tr, s.train_options, "training option")
        desc = body.get("description", "")
        eff_train = deep_merge(train_defaults, tr)
        _check_values(p, f"{path}.train", eff_train, s.train_options, s.train_check)
        skills[str(sk)] = SkillConfig(str(sk), tuple(data), _freeze(eff_train), str(desc or ""))
    if not skills_raw and "skills" in raw:
        p.add("skills", "at least one skill is required")

    # methods ---------------------------------------------------------------------------
    methods_raw = _as_mapping(p, "methods", raw.get("methods"), none_ok=False)
    if not methods_raw:
        p.add("methods", "at least one method is required")
    known_methods = sorted(set(s.methods) | set(BUILTIN_METHODS))
    methods: list[MethodConfig] = []
    for label, body in methods_raw.items():
        path = f"methods.{label}"
        body = _as_mapping(p, path, body)
        p.keys(path, body, METHOD_KEYS)
        if body.get("enabled", True) is False:
            continue
        mname = body.get("method", label)
        if "method" not in body and str(label).startswith("skill:"):
            mname = "skill"  # shorthand: `skill:<name>: {}` is the skill LoRA <name> alone
            body.setdefault("skill", str(label)[len("skill:"):])
        params = _as_mapping(p, f"{path}.params", body.get("params"))
        if not isinstance(mname, str) or mname not in known_methods:
            p.add(f"{path}.method", f"unknown method {mname!r}{suggest(str(mname), known_methods)}; "
                                    f"known: {', '.join(known_methods)}")
            continue
        data = _as_str_list(p, f"{path}.data", body.get("data"))
        for i, spec in enumerate(data):
            _check_data_spec(p, f"{path}.data[{i}]", spec, s)
        desc = str(body.get("description", "") or "")
        if mname == "base":
            if params:
                p.add(f"{path}.params", "the base model takes no parameters")
            methods.append(MethodConfig(str(label), "base", "reference", (), _freeze({}), (), desc or BUILTIN_METHODS["base"]))
            continue
        if mname == "skill":
            sk = body.get("skill", label if label in skills else None)
            if sk not in skills:
                p.add(f"{path}.skill", f"unknown skill {sk!r}{suggest(str(sk), list(skills))}; skills: {', '.join(skills)}")
                continue
            if params:
                p.add(f"{path}.params", "a single skill LoRA takes no parameters (set its training options under skills.<name>.train)")
            methods.append(MethodConfig(str(label), "skill", "reference", (sk,), _freeze({}), (), desc or f"the {sk} skill LoRA alone"))
            continue
        if "skill" in body:
            p.add(f"{path}.skill", f"only method 'skill' takes 'skill'; use 'skills: [..]' to choose the LoRAs {mname} combines")
        kind, reg_params, fn = s.methods[mname]
        sks = _as_str_list(p, f"{path}.skills", body.get("skills")) or list(skills)
        for sk in sks:
            if sk not in skills:
                p.add(f"{path}.skills", f"unknown skill {sk!r}{suggest(sk, list(skills))}; skills: {', '.join(skills)}")
        if kind == "trained":
            # DATA-MIX: one LoRA on the union of the skills' data; params are train_lora options.
            schema = dict(s.train_options) if s.train_options is not None else None
            if schema is not None:
                schema.update({k: v for k, v in param_types(fn, reg_params, reg_params).items()
                               if k not in RUNNER_KEYS and k not in schema})
            _check_options(p, f"{path}.params", params, schema, f"parameter of {mname}")
            eff = deep_merge(train_defaults, params)
            _check_values(p, f"{path}.params", eff, s.train_options, s.train_check)
        else:
            schema = {k: v for k, v in param_types(fn, reg_params, reg_params).items() if k not in RUNNER_KEYS}
            if kind == "merge":
                for k, tp in s.merge_driver.items():
                    schema.setdefault(k, tp)
            for k, v in params.items():
                if k not in schema:
                    p.add(f"{path}.params", f"unknown parameter {k!r} of method {mname}{suggest(str(k), list(schema))}; "
                                            f"parameters: {', '.join(sorted(schema)) or '(none)'}")
                elif not check_value(v, schema[k]):
                    p.add(f"{path}.params.{k}", f"method {mname}: expected {_type_name(schema[k])}, got "
                                                f"{type(v).__name__} {_fmt(v)}")
            if kind == "merge" and isinstance(params.get("weights"), (list, tuple)) and len(params["weights"]) != len(sks):
                p.add(f"{path}.params.weights", f"{len(params['weights'])} weights for {len(sks)} skills ({', '.join(sks)})")
            eff = params
        if kind not in ("trained",) and len(sks) < 2:
            p.add(f"{path}.skills", f"{mname} combines at least 2 skill LoRAs, got {len(sks)}")
        methods.append(MethodConfig(str(label), mname, kind, tuple(sks), _freeze(eff), tuple(data),
                                    desc or s.descriptions.get(mname, "")))

    # tasks -----------------------------------------------------------------------------
    ev = _as_mapping(p, "eval", raw.get("eval"), none_ok=False)
    p.keys("eval", ev, EVAL_KEYS)
    ev_opts = _as_mapping(p, "eval.options", ev.get("options"))
    _check_options(p, "eval.options", ev_opts, s.eval_options, "evaluation option")
    tasks_raw = _as_mapping(p, "eval.tasks", ev.get("tasks"), none_ok=False)
    tasks: list[TaskConfig] = []
    if not tasks_raw and "eval" in raw:
        p.add("eval.tasks", "at least one task is required")
    for label, body in tasks_raw.items():
        path = f"eval.tasks.{label}"
        body = _as_mapping(p, path, body)
        if body.get("enabled", True) is False:
            continue
        tname = body.get("task", label)
        tname = _file_task(p, path, tname, source, s)
        if s.tasks is not None and tname not in s.tasks:
            p.add(path, f"unknown task {tname!r}{suggest(str(tname), list(s.tasks))}; known: {', '.join(sorted(s.tasks))}")
        role = body.get("role", "other")
        if role not in ROLES:
            p.add(f"{path}.role", f"must be one of {', '.join(ROLES)}, got {_fmt(role)}")
        sk = body.get("skill")
        if sk is not None and sk not in skills:
            p.add(f"{path}.skill", f"unknown skill {sk!r}{suggest(str(sk), list(skills))}")
        opts = {k: v for k, v in body.items() if k not in TASK_KEYS}
        opts.update(_as_mapping(p, f"{path}.options", body.get("options")))
        if s.eval_options is None:
            pass
        else:
            for k in opts:
                if k not in s.eval_options:
                    allowed = sorted(set(s.eval_options) | TASK_KEYS)
                    p.add(path, f"unknown key {k!r}{suggest(str(k), allowed)}; allowed: {', '.join(allowed)}")
            _check_options(p, path, {k: v for k, v in opts.items() if k in s.eval_options}, s.eval_options, "evaluation option")
        eff_opts = deep_merge(ev_opts, opts)
        _check_values(p, path, eff_opts, s.eval_options, s.eval_check)
        tasks.append(TaskConfig(str(label), str(tname), str(role), sk, _freeze(eff_opts)))

    # report ----------------------------------------------------------------------------
    from .eval.registry import metric_better

    rep = _as_mapping(p, "report", raw.get("report"))
    p.keys("report", rep, REPORT_KEYS)
    cols: list[ColumnConfig] = []
    task_labels = {t.label: t for t in tasks}
    cols_raw = rep.get("columns") or []
    if not isinstance(cols_raw, list):
        p.add("report.columns", "must be a list of {task, metric, label?, better?, target?}")
        cols_raw = []
    for i, c in enumerate(cols_raw):
        path = f"report.columns[{i}]"
        c = _as_mapping(p, path, c)
        p.keys(path, c, COLUMN_KEYS)
        t, m = c.get("task"), c.get("metric")
        if t not in task_labels:
            p.add(f"{path}.task", f"{t!r} is not an evaluation task of this config{suggest(str(t), list(task_labels))}")
            continue
        if not isinstance(m, str):
            p.add(f"{path}.metric", f"expected a metric name, got {_fmt(m)}")
            continue
        tm = (s.task_metrics or {}).get(task_labels[t].task)
        if tm and m not in tm:
            p.add(f"{path}.metric", f"task {task_labels[t].task} has no metric {m!r}{suggest(m, list(tm))}; metrics: {', '.join(sorted(tm))}")
        better = c.get("better", metric_better(task_labels[t].task, m))
        if better not in ("higher", "lower", "none"):
            p.add(f"{path}.better", f"must be 'higher', 'lower' or 'none' (a control: nothing marked), got {_fmt(better)}")
        tgt = c.get("target", task_labels[t].role == "target")
        cols.append(ColumnConfig(str(c.get("label") or f"{t} {m}"), str(t), m, str(better), bool(tgt)))

    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        p.add("methods", "duplicate labels")
    cmp_raw = rep.get("compare_to")
    if cmp_raw is not None:
        if not isinstance(cmp_raw, list) or not all(isinstance(x, str) for x in cmp_raw):
            p.add("report.compare_to", f"must be a list of method labels, got {_fmt(cmp_raw)}")
        else:
            for x in cmp_raw:
                if x not in labels:
                    p.add("report.compare_to", f"{x!r} is not a method of this config{suggest(x, labels)}")
    forest_raw = rep.get("forest_columns")
    if forest_raw is not None:
        col_labels = [c.get("label") for c in (rep.get("columns") or []) if isinstance(c, Mapping)]
        if not isinstance(forest_raw, list) or not all(isinstance(x, str) for x in forest_raw):
            p.add("report.forest_columns", f"must be a list of column labels, got {_fmt(forest_raw)}")
        else:
            for x in forest_raw:
                if x not in col_labels:
                    p.add("report.forest_columns", f"{x!r} is not a label of report.columns{suggest(x, col_labels)}")

    if p.items:
        n = len(p.items)
        msg = f"{where}{f' (preset {preset})' if preset else ''}: {n} problem{'s' if n > 1 else ''}:\n" + \
              "\n".join(f"  - {x}" for x in p.items)
        raise ConfigError(msg, problems=list(p.items))
    return ExperimentConfig(
        name=name, description=str(raw.get("description", "") or ""), base=base, seed=int(seed),
        data_dir=data_dir, allow_code_execution=ace, skills=types.MappingProxyType(skills),
        methods=tuple(methods), tasks=tuple(tasks), columns=tuple(cols), preset=preset, source=source,
        raw=_freeze(raw))


def load_config(path: str | Path, preset: str | None = None, overrides: Iterable[str] = (), *,
                schemas: Schemas | None = None) -> ExperimentConfig:
    """Read, resolve (include -> preset -> overrides) and validate a config file.

    Raises:
        ConfigError: file/YAML problems, or every validation problem at once.
    """
    raw = load_raw(path)
    resolved = resolve_preset(raw, preset, str(path))
    resolved = apply_overrides(resolved, list(overrides))
    return build_config(resolved, preset=preset, source=str(path), schemas=schemas)


def preset_names(path: str | Path) -> list[str]:
    """Names of the presets a config file (with its includes) declares."""
    raw = load_raw(path)
    pr = raw.get("presets") or {}
    return sorted(pr) if isinstance(pr, dict) else []
