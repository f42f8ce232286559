"""Experiment configs: YAML + ``include`` + presets + ``key=value`` overrides -> frozen dataclasses.

A config file declares one skill-composition experiment (see ``configs/*.yaml`` and the README
section "Experiments")::

    name: math_code
    base: smollm2-135m
    seed: 0
    train: {r: 16, lora_alpha: 32, learning_rate: 2.0e-4, max_steps: 100}     # defaults for every skill LoRA
    skills:
      math: {data: ["gsm8k:max_samples=300"]}
      code: {data: ["codealpaca:max_samples=300"], train: {cutoff_len: 384}}
    methods:                       # label -> {method, params, skills, skill, data, ...}
      base: {}                     # `method` defaults to the label
      math: {method: skill, skill: math}   # or `skill:math: {}`
      ties: {params: {density: 0.5}}
      cat_static: {method: cat, params: {no_train: true, init: uniform}}
      cat_layer: {like: cat, params: {granularity: layer}}   # cat's method, skills, data and params, then these
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
the presets it ``extends``; several presets ``a,b`` apply left to right) -> command-line
``key.path=value`` overrides (values parsed as YAML). In mappings that are merged, a value ``~``
(null) *sets* None; to drop a method or task from a preset, give it ``enabled: false`` (a disabled
task's report columns are dropped with it). A method row ``like: <label>`` starts from that row's
``method``, ``skills``, ``skill``, ``data`` and ``params`` (resolved after the preset and the
overrides) and merges its own keys over them.

Validation happens once, before any work, and reports every problem together in one
:class:`~lorasoups.errors.ConfigError`: unknown keys (with "did you mean"), unknown methods, tasks,
skills, datasets and presets, and every option checked against its one declaration
(:mod:`lorasoups.spec`): method parameters against the method's registered spec, training,
evaluation and data-spec options against theirs (:mod:`lorasoups.config_checks`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .config_checks import (BUILTIN_METHODS, Known, Problems, as_mapping, as_str_list, base_problems,
                            data_spec_problems, eval_problems, fmt, known_names, label_list_problems, layered,
                            method_problems, task_file, train_problems)
from .config_load import (apply_overrides, deep_merge, freeze, load_raw, parse_override, parse_yaml,  # noqa: F401
                          resolve_preset, thaw)
from .config_rows import LIKE_KEYS, disabled_tasks, linked_rows, resolve_like  # noqa: F401
from .errors import ConfigError
from .registry import suggest


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


TOP_KEYS = {"name", "description", "base", "seed", "data_dir", "allow_code_execution", "train",
            "skills", "methods", "eval", "report", "presets", "include", "notes", "substitutes"}
SKILL_KEYS = {"data", "train", "description"}
METHOD_KEYS = {"method", "params", "skills", "skill", "data", "description", "enabled", "like"}
EVAL_KEYS = {"options", "tasks"}
TASK_KEYS = {"task", "role", "skill", "enabled", "options"}
REPORT_KEYS = {"columns", "title", "compare_to", "forest_columns"}
COLUMN_KEYS = {"label", "task", "metric", "better", "target"}
ROLES = ("target", "skill", "other")


def _skills(p: Problems, raw: Mapping[str, Any], known: Known) -> tuple[dict[str, Any], dict[str, SkillConfig]]:
    train_defaults = as_mapping(p, "train", raw.get("train"))
    skills_raw = as_mapping(p, "skills", raw.get("skills"), none_ok=False)
    skills: dict[str, SkillConfig] = {}
    for sk, body in skills_raw.items():
        path = f"skills.{sk}"
        body = as_mapping(p, path, body)
        p.keys(path, body, SKILL_KEYS)
        data = as_str_list(p, f"{path}.data", body.get("data"))
        if not data:
            p.add(f"{path}.data", "no training data (give a dataset name or file, e.g. gsm8k:max_samples=300)")
        for i, spec in enumerate(data):
            p.extend(data_spec_problems(spec, f"{path}.data[{i}]", known))
        tr = as_mapping(p, f"{path}.train", body.get("train"))
        p.extend(layered(train_problems, train_defaults, tr, f"{path}.train", "train"))
        skills[str(sk)] = SkillConfig(str(sk), tuple(data), freeze(deep_merge(train_defaults, tr)),
                                      str(body.get("description", "") or ""))
    if not skills_raw and "skills" in raw:
        p.add("skills", "at least one skill is required")
    return train_defaults, skills


def _method(p: Problems, label: str, body: Any, skills: Mapping[str, SkillConfig], train_defaults: Mapping[str, Any],
            known: Known, registry: Mapping[str, Any]) -> MethodConfig | None:
    path = f"methods.{label}"
    body = as_mapping(p, path, body)
    p.keys(path, body, METHOD_KEYS)
    if body.get("enabled", True) is False:
        return None
    mname = body.get("method", label)
    if "method" not in body and label.startswith("skill:"):
        mname = "skill"  # shorthand: `skill:<name>: {}` is the skill LoRA <name> alone
        body.setdefault("skill", label[len("skill:"):])
    params = as_mapping(p, f"{path}.params", body.get("params"))
    known_methods = sorted(set(registry) | set(BUILTIN_METHODS))
    if not isinstance(mname, str) or mname not in known_methods:
        p.add(f"{path}.method", f"unknown method {mname!r}{suggest(str(mname), known_methods)}; "
                                f"known: {', '.join(known_methods)}")
        return None
    data = as_str_list(p, f"{path}.data", body.get("data"))
    for i, spec in enumerate(data):
        p.extend(data_spec_problems(spec, f"{path}.data[{i}]", known))
    desc = str(body.get("description", "") or "")
    if mname == "base":
        if params:
            p.add(f"{path}.params", "the base model takes no parameters")
        return MethodConfig(label, "base", "reference", (), freeze({}), (), desc or BUILTIN_METHODS["base"])
    if mname == "skill":
        sk = body.get("skill", label if label in skills else None)
        if sk not in skills:
            p.add(f"{path}.skill", f"unknown skill {sk!r}{suggest(str(sk), list(skills))}; skills: {', '.join(skills)}")
            return None
        if params:
            p.add(f"{path}.params", "a single skill LoRA takes no parameters (set its training options under skills.<name>.train)")
        return MethodConfig(label, "skill", "reference", (sk,), freeze({}), (), desc or f"the {sk} skill LoRA alone")
    if "skill" in body:
        p.add(f"{path}.skill", f"only method 'skill' takes 'skill'; use 'skills: [..]' to choose the LoRAs {mname} combines")
    info = registry[mname]
    sks = as_str_list(p, f"{path}.skills", body.get("skills")) or list(skills)
    for sk in sks:
        if sk not in skills:
            p.add(f"{path}.skills", f"unknown skill {sk!r}{suggest(sk, list(skills))}; skills: {', '.join(skills)}")
    if info.kind == "trained":
        # DATA-MIX: one LoRA on the union of the skills' data; params are its options over `train`.
        p.extend(layered(lambda o, w: method_problems(info, o, w), train_defaults, params, f"{path}.params", "train"))
        params = deep_merge(train_defaults, params)
    else:
        p.extend(method_problems(info, params, f"{path}.params"))
        if info.kind == "merge" and isinstance(params.get("weights"), (list, tuple)) and len(params["weights"]) != len(sks):
            p.add(f"{path}.params.weights", f"{len(params['weights'])} weights for {len(sks)} skills ({', '.join(sks)})")
    if info.kind != "trained" and len(sks) < 2:
        p.add(f"{path}.skills", f"{mname} combines at least 2 skill LoRAs, got {len(sks)}")
    return MethodConfig(label, mname, info.kind, tuple(sks), freeze(params), tuple(data), desc or info.description)


def _tasks(p: Problems, raw: Mapping[str, Any], skills: Mapping[str, SkillConfig], source: str | None,
           known: Known) -> list[TaskConfig]:
    ev = as_mapping(p, "eval", raw.get("eval"), none_ok=False)
    p.keys("eval", ev, EVAL_KEYS)
    ev_opts = as_mapping(p, "eval.options", ev.get("options"))
    tasks_raw = as_mapping(p, "eval.tasks", ev.get("tasks"), none_ok=False)
    if not tasks_raw and "eval" in raw:
        p.add("eval.tasks", "at least one task is required")
    tasks: list[TaskConfig] = []
    for label, body in tasks_raw.items():
        path = f"eval.tasks.{label}"
        body = as_mapping(p, path, body)
        if body.get("enabled", True) is False:
            continue
        tname = task_file(p, path, body.get("task", label), source, known)
        if tname not in known.tasks:
            p.add(path, f"unknown task {tname!r}{suggest(str(tname), list(known.tasks))}; known: {', '.join(sorted(known.tasks))}")
        role = body.get("role", "other")
        if role not in ROLES:
            p.add(f"{path}.role", f"must be one of {', '.join(ROLES)}, got {fmt(role)}")
        sk = body.get("skill")
        if sk is not None and sk not in skills:
            p.add(f"{path}.skill", f"unknown skill {sk!r}{suggest(str(sk), list(skills))}")
        opts = {k: v for k, v in body.items() if k not in TASK_KEYS}
        opts.update(as_mapping(p, f"{path}.options", body.get("options")))
        p.extend(layered(eval_problems, ev_opts, opts, path, "eval.options"))
        tasks.append(TaskConfig(str(label), str(tname), str(role), sk, freeze(deep_merge(ev_opts, opts))))
    return tasks


def _columns(p: Problems, rep: Mapping[str, Any], tasks: list[TaskConfig], known: Known,
             disabled: set[str] = frozenset()) -> list[ColumnConfig]:
    from .eval.registry import metric_better

    cols: list[ColumnConfig] = []
    task_labels = {t.label: t for t in tasks}
    cols_raw = rep.get("columns") or []
    if not isinstance(cols_raw, list):
        p.add("report.columns", "must be a list of {task, metric, label?, better?, target?}")
        cols_raw = []
    for i, c in enumerate(cols_raw):
        path = f"report.columns[{i}]"
        c = as_mapping(p, path, c)
        p.keys(path, c, COLUMN_KEYS)
        t, m = c.get("task"), c.get("metric")
        if t in disabled:
            continue  # the task is switched off (enabled: false): its columns go with it
        if t not in task_labels:
            p.add(f"{path}.task", f"{t!r} is not an evaluation task of this config{suggest(str(t), list(task_labels))}")
            continue
        if not isinstance(m, str):
            p.add(f"{path}.metric", f"expected a metric name, got {fmt(m)}")
            continue
        tm = known.tasks.get(task_labels[t].task)
        if tm and m not in tm:
            p.add(f"{path}.metric", f"task {task_labels[t].task} has no metric {m!r}{suggest(m, list(tm))}; metrics: {', '.join(sorted(tm))}")
        better = c.get("better", metric_better(task_labels[t].task, m))
        if better not in ("higher", "lower", "none"):
            p.add(f"{path}.better", f"must be 'higher', 'lower' or 'none' (a control: nothing marked), got {fmt(better)}")
        tgt = c.get("target", task_labels[t].role == "target")
        cols.append(ColumnConfig(str(c.get("label") or f"{t} {m}"), str(t), m, str(better), bool(tgt)))
    return cols


def build_config(raw: Mapping[str, Any], *, preset: str | None = None, source: str | None = None,
                 known: Known | None = None) -> ExperimentConfig:
    """Validate a resolved raw config (preset and overrides already applied) and freeze it.

    Args:
        known: task and dataset names to check against (default: the live registries).

    Raises:
        ConfigError: every problem found, one per line, in one message (``.problems`` lists them).
    """
    from .methods import load_methods

    known = known or known_names()
    where = source or "config"
    p = Problems()
    raw = dict(raw)
    p.keys("", raw, TOP_KEYS)
    name = raw.get("name") or (Path(source).stem if source else "experiment")
    if not isinstance(name, str):
        p.add("name", "must be a string")
        name = str(name)
    base = raw.get("base", "smollm2-135m")
    p.extend(base_problems(base))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        p.add("seed", f"expected int, got {fmt(seed)}")
        seed = 0
    data_dir = raw.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        p.add("data_dir", f"expected a folder path, got {fmt(data_dir)}")
        data_dir = None
    ace = raw.get("allow_code_execution", False)
    if not isinstance(ace, bool):
        p.add("allow_code_execution", f"expected true/false, got {fmt(ace)}")
        ace = False

    train_defaults, skills = _skills(p, raw, known)
    methods_raw = as_mapping(p, "methods", raw.get("methods"), none_ok=False)
    if not methods_raw:
        p.add("methods", "at least one method is required")
    registry = dict(load_methods().items())
    methods_raw = resolve_like(p, methods_raw)
    methods = [m for label, body in methods_raw.items()
               if (m := _method(p, str(label), body, skills, train_defaults, known, registry)) is not None]
    methods = linked_rows(p, methods, methods_raw, registry, seed if isinstance(seed, int) else 0)
    tasks = _tasks(p, raw, skills, source, known)
    rep = as_mapping(p, "report", raw.get("report"))
    p.keys("report", rep, REPORT_KEYS)
    cols = _columns(p, rep, tasks, known, disabled_tasks(raw))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        p.add("methods", "duplicate labels")
    p.extend(label_list_problems(rep, labels))

    if p.items:
        n = len(p.items)
        msg = f"{where}{f' (preset {preset})' if preset else ''}: {n} problem{'s' if n > 1 else ''}:\n" + \
              "\n".join(f"  - {x}" for x in p.items)
        raise ConfigError(msg, problems=list(p.items))
    return ExperimentConfig(
        name=name, description=str(raw.get("description", "") or ""), base=base, seed=int(seed),
        data_dir=data_dir, allow_code_execution=ace, skills=types.MappingProxyType(skills),
        methods=tuple(methods), tasks=tuple(tasks), columns=tuple(cols), preset=preset, source=source,
        raw=freeze(raw))


def load_config(path: str | Path, preset: str | None = None, overrides: Iterable[str] = (), *,
                known: Known | None = None) -> ExperimentConfig:
    """Read, resolve (include -> preset -> overrides) and validate a config file.

    Raises:
        ConfigError: file/YAML problems, or every validation problem at once.
    """
    raw = load_raw(path)
    resolved = resolve_preset(raw, preset, str(path))
    resolved = apply_overrides(resolved, list(overrides))
    return build_config(resolved, preset=preset, source=str(path), known=known)


def preset_names(path: str | Path) -> list[str]:
    """Names of the presets a config file (with its includes) declares."""
    raw = load_raw(path)
    pr = raw.get("presets") or {}
    return sorted(pr) if isinstance(pr, dict) else []
