"""The registry of evaluation tasks.

A :class:`Task` turns data-dir records into :class:`Item` s, renders prompts in the one prompt format
shared with training (:mod:`lorasoups.prompts`; few-shot demos become earlier chat turns), turns a
completion (and, for code tasks, the sandbox's :class:`~lorasoups.eval.sandbox.ExecResult`) into
per-item scores, and aggregates them into metrics with standard errors. Bump a task's ``version``
whenever its prompt, data selection, extraction or scoring changes, so results stay comparable.

Besides the built-in task modules (:data:`TASK_MODULES`), tasks come from a user's data file
(:func:`register_file_task`, :mod:`lorasoups.eval.tasks.custom`) and from the ``lorasoups.tasks``
entry points of installed distributions (:func:`load_entry_point_tasks`; docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError
from ..prompts import has_chat_template, render_prompt, user_text
from ..registry import Registry, UnknownNameError, lazy_loader
from .metrics import Metric, mean_stderr

LIKELIHOOD_METRICS = ("nll_gold", "nll_control", "nll_gap", "gold_preferred")
#: ``primary``/``score``: goals, ranked (best marked, gains, super-linearity); ``failure`` rates,
#: ``control`` values and ``diagnostic``s (describe the predictions) are reported, never ranked.
ROLES = ("primary", "score", "failure", "control", "diagnostic")
RANKED_ROLES = ("primary", "score")


@dataclass(frozen=True)
class MetricInfo:
    """A metric's declaration: its ``role`` (one of :data:`ROLES`) and which direction is better,
    ``"higher"`` / ``"lower"``, or ``"none"`` for a metric that is never ranked (not a goal)."""

    role: str = "score"
    better: str = "higher"

    @property
    def ranked(self) -> bool:
        return self.role in RANKED_ROLES


#: The likelihood metrics of every task with gold responses (see :mod:`lorasoups.eval.runner`).
LIKELIHOOD_INFO = {"nll_gold": MetricInfo("score", "lower"), "nll_control": MetricInfo("control", "none"),
                   "nll_gap": MetricInfo("score", "higher"), "gold_preferred": MetricInfo("score", "higher")}
#: Entry-point group for tasks defined outside the package (docs/evaluation.md, "Registering a task").
ENTRY_POINT_GROUP = "lorasoups.tasks"

TASK_MODULES = [
    "lorasoups.eval.tasks.math_code",
    "lorasoups.eval.tasks.math_words",
    "lorasoups.eval.tasks.mbpp",
    "lorasoups.eval.tasks.qa",
    "lorasoups.eval.tasks.prompt_formats",
]


@dataclass
class Item:
    """One evaluation item.

    Attributes:
        id: stable id ``<task>-<index in the data file>`` (pairs items across runs).
        instruction, input: the user turn (rendered with :func:`lorasoups.prompts.render_prompt`).
        gold: what scoring compares against (a float, a string, a count...).
        gold_text: the gold *response* whose likelihood is measured, or None (no likelihood).
        meta: extra fields (e.g. MBPP tests, the prompt format number).
    """

    id: str
    instruction: str
    input: str | None = None
    gold: Any = None
    gold_text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Demo:
    """A few-shot demonstration: a user turn and the assistant's response."""

    instruction: str
    input: str | None
    output: str


def render_fewshot(tokenizer: Any, instruction: str, input: str | None = None, demos: Sequence[Demo] = (),
                   system: str | None = None) -> str:
    """The prompt for one item, preceded by few-shot demos.

    Without demos this is exactly :func:`lorasoups.prompts.render_prompt` (the training format).
    With a chat template, each demo is a user turn and an assistant turn before the item's user
    turn; without one, the Alpaca-style blocks of the demos (prompt + response) are concatenated
    before the item's block.
    """
    if not demos:
        return render_prompt(tokenizer, instruction, input, system=system)
    if has_chat_template(tokenizer):
        msgs: list[dict[str, str]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        for d in demos:
            msgs.append({"role": "user", "content": user_text(d.instruction, d.input)})
            msgs.append({"role": "assistant", "content": d.output})
        msgs.append({"role": "user", "content": user_text(instruction, input)})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = [render_prompt(tokenizer, d.instruction, d.input, style="alpaca") + d.output + "\n\n" for d in demos]
    return "".join(parts) + render_prompt(tokenizer, instruction, input, style="alpaca")


class Task:
    """Base class of evaluation tasks. Subclasses set the class attributes and implement
    :meth:`load_items` and :meth:`score`.

    Attributes:
        name, version, kind, description: shown by ``lorasoups ls tasks``; ``kind`` is one of
            ``math_code``, ``math_words``, ``code``, ``qa``, ``rc``, ``prompt_formats``.
        executes_code: completions are programs run in the sandbox (needs permission).
        default_shots / max_shots: few-shot demos used by default / available.
        max_new_tokens: default generation budget.
        stop: strings that end a completion (the text from the stop string on is dropped).
        stop_regex: a pattern that ends a completion after its match (every item; see
            :meth:`stop_rule` for rules that depend on the item).
        stop_note: how completions end, in words (written to ``results.json``).
        timeout_s: per-program wall-clock limit in the sandbox.
        likelihood_note: why there is no gold-answer likelihood, when there is none (then the
            task's items have no ``gold_text``).
        score_metrics: names of the metrics computed from completions.
        metrics: every metric name the task can report (completion metrics, then likelihood
            metrics when the task has gold responses).
        primary_metrics: the metrics that summarise the task (default: the first completion
            metric, or ``nll_gap`` for a likelihood-only task); reported in ``results.json``.
        metric_info: ``{metric: MetricInfo}`` for the completion metrics that are not
            higher-is-better scores (failure rates, diagnostics, lower-is-better scores); see
            :meth:`info`.
    """

    name: str = ""
    version: str = "1"
    kind: str = ""
    description: str = ""
    executes_code: bool = False
    default_shots: int = 0
    max_shots: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_regex: str | None = None
    stop_note: str | None = None
    system: str | None = None
    timeout_s: float = 5.0
    likelihood_note: str | None = None
    score_metrics: tuple[str, ...] = ()
    primary_metrics: tuple[str, ...] = ()
    metric_info: dict[str, MetricInfo] = {}

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.score_metrics) + (() if self.likelihood_note else LIKELIHOOD_METRICS)

    def primary(self, available: Sequence[str] | None = None) -> tuple[str, ...]:
        """The primary metrics (:attr:`primary_metrics`, default the first completion metric);
        with ``available`` (the metrics a run reported), those of them that are there, else
        ``nll_gap`` when there (a likelihood-only run)."""
        p = tuple(self.primary_metrics) or tuple(self.score_metrics[:1]) or (("nll_gap",) if not self.likelihood_note else ())
        if available is None:
            return p
        return tuple(m for m in p if m in available) or (("nll_gap",) if "nll_gap" in available else ())

    def info(self, metric: str) -> MetricInfo:
        """The declaration of ``metric``: primary metrics have role ``primary`` (direction from
        :attr:`metric_info`, default higher); others as declared in :attr:`metric_info` or
        :data:`LIKELIHOOD_INFO`, else a higher-is-better ``score``. A role that is not ranked
        always has ``better = "none"``.

        Raises:
            UnknownNameError: the task reports no metric called ``metric``.
        """
        if metric not in self.metrics:
            raise UnknownNameError(f"task {self.name!r} has no metric {metric!r}; metrics: {', '.join(self.metrics)}")
        decl = self.metric_info.get(metric) or LIKELIHOOD_INFO.get(metric) or MetricInfo()
        if metric in self.primary():
            return MetricInfo("primary", decl.better)
        return decl if decl.ranked else MetricInfo(decl.role, "none")

    # -- data -------------------------------------------------------------------------------
    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        raise NotImplementedError

    def load_demos(self, data_dir: str | Path | None = None, shots: int | None = None) -> list[Demo]:
        """The first ``shots`` demos (default :attr:`default_shots`)."""
        return []

    def _check_shots(self, shots: int | None) -> int:
        k = self.default_shots if shots is None else int(shots)
        if k < 0 or k > self.max_shots:
            from ..errors import ConfigError

            raise ConfigError(f"task {self.name!r}: shots={k} out of range 0..{self.max_shots}")
        return k

    def render(self, tokenizer: Any, item: Item, demos: Sequence[Demo] = ()) -> str:
        return render_fewshot(tokenizer, item.instruction, item.input, demos, system=self.system)

    def stop_rule(self, item: Item) -> Any:
        """When the completion for ``item`` is complete (a :data:`lorasoups.eval.generate.StopRule`:
        regex, callable ``text -> end offset | None``, or None). Default: :attr:`stop_regex`.
        Code tasks stop only once a closed code block defines what the task calls."""
        return self.stop_regex

    # -- scoring ----------------------------------------------------------------------------
    def program(self, item: Item, completion: str) -> tuple[Any, str | None, str]:
        """For code tasks: ``(Program | None, extracted code, how)``."""
        return None, None, "no code"

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        """Per-item record fields: ``extracted``, ``status``, ``scores`` ({metric: float})."""
        raise NotImplementedError

    def aggregate(self, items: Sequence[Item], records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        """Mean and standard error of every per-item score."""
        keys: list[str] = []
        for r in records:
            for k in r.get("scores", {}):
                if k not in keys:
                    keys.append(k)
        return {k: mean_stderr([r.get("scores", {}).get(k) for r in records]) for k in keys}

    def __repr__(self) -> str:
        return f"<Task {self.name} v{self.version} ({self.kind})>"


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Add a task instance to :data:`TASKS` (under ``task.name``)."""
    TASKS.register(task.name, task)
    return task


_load = lazy_loader(TASK_MODULES)


_plugins_loaded = {"v": False}


def load_tasks() -> Registry[Task]:
    """Import the task modules (so they register), load the tasks of installed distributions'
    ``lorasoups.tasks`` entry points (once), and return :data:`TASKS`."""
    _load()
    if not _plugins_loaded["v"]:
        _plugins_loaded["v"] = True
        load_entry_point_tasks()
    return TASKS


def _entry_points() -> list[Any]:
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_entry_point_tasks() -> list[str]:
    """Register the tasks of every ``lorasoups.tasks`` entry point of the installed distributions.

    An entry point may name a :class:`Task` instance, a :class:`Task` subclass (instantiated with
    no arguments), a callable returning a task or a list of tasks, or a module that registers its
    tasks itself with :func:`register_task` when imported. A task whose name is already
    registered by the same object is skipped; another object with a taken name is an error.

    Returns:
        The names registered by this call.

    Raises:
        ConfigError: an entry point cannot be loaded or gives something that is not a task; the
            message names the entry point and its distribution.
    """
    import inspect
    import types

    from ..errors import ConfigError

    added: list[str] = []
    for ep in _entry_points():
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        label = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}, distribution {dist})"
        before = set(TASKS.names())
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - any import failure of a plugin is reported the same way
            raise ConfigError(f"{label}: cannot load: {type(e).__name__}: {e}") from None
        if isinstance(obj, types.ModuleType):
            added += sorted(set(TASKS.names()) - before)
            continue
        if inspect.isclass(obj) and issubclass(obj, Task):
            obj = obj()
        elif callable(obj) and not isinstance(obj, Task):
            obj = obj()
        objs = obj if isinstance(obj, (list, tuple)) else [obj]
        for t in objs:
            if not isinstance(t, Task) or not t.name:
                raise ConfigError(f"{label}: gives {t!r}, not a lorasoups Task with a name")
            if t.name in TASKS:
                if type(TASKS.get(t.name)) is type(t):
                    continue
                raise ConfigError(f"{label}: task name {t.name!r} is already taken")
            register_task(t)
            added.append(t.name)
    return added


def get_task(name: str) -> Task:
    """The task called ``name``; a task file spec (``PATH[:key=value,...]``, see
    :mod:`lorasoups.eval.tasks.custom`) is read and registered under its name first.

    Raises:
        UnknownNameError: unknown name, with "did you mean" suggestions.
        ConfigError / DataError: a bad task file spec or a missing file.
    """
    reg = load_tasks()
    if name not in reg:
        from .tasks.custom import is_task_file_spec

        if is_task_file_spec(name):
            return register_file_task(name)
    return reg.get(name)


def register_file_task(spec: str | Path, base_dir: str | Path | None = None) -> Task:
    """Register the task of a file spec ``PATH[:key=value,...]`` and return it.

    A relative ``PATH`` is taken relative to ``base_dir`` (e.g. the config file's folder) when
    given, else to the working directory. Registering the same file with the same options again
    returns the registered task; a different file or options under a taken name is an error
    (set ``name=`` in the spec).

    Raises:
        ConfigError: a taken name, unknown options.
        DataError: the file does not exist.
    """
    from ..errors import ConfigError
    from .tasks.custom import FileTask, split_task_spec

    path, opts = split_task_spec(str(spec))
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    task = FileTask(p, opts)
    load_tasks()
    if task.name in TASKS:
        old = TASKS.get(task.name)
        if isinstance(old, FileTask) and old.path == task.path:
            if old.version == task.version and old.mode == task.mode:
                return old
            TASKS._items[task.name] = task  # the same file re-read (changed content or options): replace it
            return task
        raise ConfigError(f"task file {task.path}: the task name {task.name!r} is already taken"
                          f" by {getattr(old, 'path', 'a built-in task')}; add :name=OTHER to the spec")
    return register_task(task)


def metric_better(task: str, metric: str) -> str:
    """``"higher"``, ``"lower"`` or ``"none"`` (never ranked) for ``metric`` of the registered task
    ``task``, from the task's declaration (:meth:`Task.info`); ``"none"`` for an unknown name."""
    try:
        return get_task(task).info(metric).better
    except KeyError:  # UnknownNameError: unknown task or metric
        return "none"


def load_records(dataset: str, data_dir: str | Path | None, task: str) -> list[dict[str, Any]]:
    """Records of a catalogue dataset for ``task``.

    Raises:
        DataError: the file is missing or malformed; the message names the task and the file.
    """
    from ..datasets import load_dataset

    try:
        recs = load_dataset(dataset, data_dir)
    except DataError as e:
        raise DataError(f"task {task!r} needs dataset {dataset!r}: {e}") from None
    if not isinstance(recs, list):
        raise DataError(f"task {task!r}: dataset {dataset!r} is raw text, not records")
    return recs


def require(rec: dict[str, Any], keys: Sequence[str], dataset: str, index: int) -> None:
    """Raise DataError when ``rec`` lacks one of ``keys``."""
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"dataset {dataset!r} record {index}: missing field(s) {', '.join(missing)}")


def format_number(v: float) -> str:
    """``15.0`` -> ``15``, ``9.8`` -> ``9.8`` (for templated gold answers)."""
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))
