"""``evaluate``: run tasks on a model and write one folder per task (``<task>/results.json`` +
``<task>/samples.jsonl``).

For every task: load the items (first ``limit``), render prompts (few-shot demos as chat turns),
generate greedy completions (unless ``generate=False``), extract answers, run programs in the
sandbox (code tasks, with ``allow_code_execution=True``), score, and — for every task whose items
have a gold response — compute teacher-forced likelihoods (:mod:`lorasoups.eval.likelihood`).
Every metric is a :class:`~lorasoups.eval.metrics.Metric` (``{"value", "stderr", "n"}`` in JSON) with
its role and direction declared by the task (:meth:`lorasoups.eval.registry.Task.info`); per-item
values are in the samples file (``scores``), so two runs can be compared item by item with
:func:`lorasoups.eval.metrics.paired_compare` / :func:`~lorasoups.eval.metrics.compare_runs`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError, DataError
from ..progress import bar as _bar
from .likelihood import bar_per_batch, likelihood_scores
from .model import base_for_adapter, build_generator
from .registry import LIKELIHOOD_METRICS, Item, Task, get_task, load_tasks
from .samples import RESULTS_FILE, _finite, read_samples, samples_path, write_task_folder
from .options import EvalOptions

OPTION_DEFAULTS: dict[str, Any] = {k: f.default for k, f in EvalOptions.model_fields.items()}


def resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``, validated by :class:`~lorasoups.eval.options.EvalOptions`.

    Raises:
        ConfigError: unknown option names or invalid values (every problem listed).
    """
    return EvalOptions.parse(options, where="eval").model_dump()


def expand_task_names(names: Iterable[str] | str) -> list[str]:
    """Task names from a list (entries may be comma-separated; ``all`` = every task; a task file
    spec ``PATH[:key=value,...]`` is registered and gives its task's name), in order, without
    duplicates.

    Raises:
        UnknownNameError: an unknown name (with "did you mean").
        ConfigError: no task given.
    """
    if isinstance(names, str):
        names = [names]
    reg = load_tasks()
    out: list[str] = []
    for entry in names:
        parts: list[str] = []
        for n in str(entry).split(","):
            # ``key=value`` pieces belong to the task file spec before them (``t.jsonl:prompt=q,answers=a``)
            if parts and "=" in n and ":" in parts[-1] and re.match(r"^\s*[A-Za-z_]+\s*=", n):
                parts[-1] += "," + n
            else:
                parts.append(n)
        for n in parts:
            n = n.strip()
            if not n:
                continue
            batch = reg.names() if n == "all" else [get_task(n).name]
            for x in batch:
                if x not in out:
                    out.append(x)
    if not out:
        raise ConfigError("no evaluation task given; see `lorasoups ls tasks`")
    return out


def _log(opts: dict[str, Any], msg: str) -> None:
    if opts.get("progress"):
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _bars(opts: dict[str, Any]) -> bool | None:
    """The ``progress`` switch for :func:`lorasoups.progress.bar`: None (terminal decides) when the
    evaluation reports progress, False otherwise."""
    return None if opts.get("progress") else False


def _task_shots(task: Task, shots: int | None) -> int:
    k = task.default_shots if shots is None else shots
    return max(0, min(k, task.max_shots))


def evaluate(base: str | None, adapter: str | Path | None = None, tasks: Sequence[str] | str = (), out: str | Path | None = None,
             *, generator: Any = None, tokenizer: Any = None, **options: Any) -> dict[str, Any]:
    """Evaluate ``base`` (+ ``adapter``) on ``tasks`` and write the results to ``out``, one folder
    per task: ``out/<task>/results.json`` and ``out/<task>/samples.jsonl``
    (:func:`lorasoups.eval.samples.write_task_folder`); ``out/results.json`` holds the run's
    options, model and provenance and names the task files (``"tasks": {name: "<name>/results.json"}``).

    Args:
        base: base model (embedded name, HF folder or hub id); None: the base the adapter records
            (``base_model_name_or_path``; announced on stderr), else the default embedded model.
        adapter: PEFT LoRA folder or MoE folder (None: the base model alone).
        tasks: task names (see ``lorasoups ls tasks``; ``all`` for every task).
        out: output folder (written atomically; None: write nothing, just return the results).
        generator: a ready backend (tests pass :class:`~lorasoups.eval.generate.CannedGenerator`);
            default: built from ``backend``.
        tokenizer: the tokenizer used to render prompts (default: the base model's).
        **options: see :data:`OPTION_DEFAULTS` (``limit``, ``shots``, ``batch_size``,
            ``max_new_tokens``, ``allow_code_execution``, ``generate``, ``likelihood``, ``backend``,
            ``prefix_cache``, ``bf16``, ``merge_lora``, ``data_dir``, ``timeout_s``,
            ``sandbox_workers``, ``sandbox_isolation``, ``overwrite``, ``rescore``, ``progress``).

    Returns:
        ``{"tasks": {name: {"version", "kind", "n_items", "metrics": {metric: {"value", "stderr",
        "n"}}, "primary_metrics", "metric_roles": {metric: {"role", "better"}}, "notes", "options",
        ...}}, "options", "model", "checksums", "sandbox", "provenance", "wall_time_s"}``; each
        task's ``results.json`` holds this document restricted to that task.

    Raises:
        UnknownNameError: unknown task (with "did you mean").
        ConfigError: invalid options; code tasks without ``allow_code_execution``.
        DataError: a task's data file is missing or malformed; a corrupt samples file (rescore).
        ModelError / AdapterError: the model or adapter cannot be loaded.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        LorasoupsError: ``out`` cannot be written (checked before the model is loaded).
    """
    t_start = time.time()
    opts = resolve_options(options)
    if base is None:
        base = base_for_adapter(adapter)
    names = expand_task_names(tasks)
    task_objs = [get_task(n) for n in names]
    rescore_dir = Path(opts["rescore"]) if opts["rescore"] else None
    generating = bool(opts["generate"]) and rescore_dir is None
    executes = [t.name for t in task_objs if t.executes_code]
    if executes and (generating or rescore_dir is not None) and not opts["allow_code_execution"]:
        from .sandbox import code_execution_refusal

        raise ConfigError(code_execution_refusal(executes))

    # data first: a missing file fails before any model is loaded
    data: dict[str, tuple[list[Item], list[Any], int]] = {}
    for t in task_objs:
        demos = t.load_demos(opts["data_dir"], _task_shots(t, opts["shots"]))
        data[t.name] = (t.load_items(opts["data_dir"], opts["limit"]), demos, len(demos))  # shots actually used
        if not data[t.name][0]:
            raise DataError(f"task {t.name!r}: no items to evaluate")
    previous: dict[str, dict[str, dict[str, Any]]] = {}
    if rescore_dir is not None:
        for t in task_objs:
            previous[t.name] = {r["id"]: r for r in read_samples(samples_path(rescore_dir, t.name))}

    if out is not None:
        from ..paths import check_not_input, check_writable

        check_not_input(out, [p for p in (adapter, rescore_dir) if p is not None])
        if Path(out).exists() and not opts["overwrite"]:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_writable(out)  # before the model is loaded and anything is generated

    need_model = generating or (opts["likelihood"] and rescore_dir is None
                                and any(it.gold_text for its, _, _ in data.values() for it in its))
    model_info: dict[str, Any] = {"base": base, "adapter": str(adapter) if adapter else None}
    if generator is None and need_model:
        generator, tokenizer, model_info = build_generator(base, adapter, opts)
    if tokenizer is None:
        tokenizer = getattr(generator, "tok", None)
    if tokenizer is None:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(base)

    run = _TaskRun(opts, generator, tokenizer, generating, rescore_dir)
    entries: dict[str, Any] = {}
    all_samples: dict[str, list[dict[str, Any]]] = {}
    try:
        for t in task_objs:
            entries[t.name], all_samples[t.name] = run.task(t, *data[t.name], previous.get(t.name))
    finally:
        if run.sandbox is not None:
            run.sandbox.close()

    from ..provenance import provenance

    results: dict[str, Any] = {"tasks": entries}
    if run.sandbox is not None:
        results["sandbox"] = run.sandbox.info
    results["options"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
                          "tasks": names, "base": base, "adapter": str(adapter) if adapter else None}
    results["model"] = model_info
    if out is not None and generator is not None and model_info.get("base_path"):
        from .model import checksums

        results["checksums"] = checksums(model_info)
    results["provenance"] = provenance()
    results["wall_time_s"] = round(time.time() - t_start, 2)
    results = _finite(results)
    if out is not None:
        from ..paths import atomic_dir

        with atomic_dir(out, overwrite=opts["overwrite"]) as tmp:
            for name, recs in all_samples.items():
                write_task_folder(tmp / name, {**results, "tasks": {name: results["tasks"][name]}}, recs)
            index = {**results, "tasks": {name: f"{name}/{RESULTS_FILE}" for name in entries}}
            (tmp / RESULTS_FILE).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        results["out"] = str(out)
    return results


class _TaskRun:
    """One task's evaluation inside :func:`evaluate`: completions (generated, re-scored or none),
    programs in the sandbox (started on first need, shared by the tasks), scores, likelihoods,
    and the task's ``results.json`` entry."""

    def __init__(self, opts: dict[str, Any], generator: Any, tokenizer: Any, generating: bool,
                 rescore_dir: Path | None):
        self.opts, self.generator, self.tokenizer = opts, generator, tokenizer
        self.generating, self.rescore_dir = generating, rescore_dir
        self.sandbox: Any = None

    def completions(self, t: Task, items: list[Item], prompts: list[str], max_new: int, k: int,
                    prev: dict[str, dict[str, Any]] | None, notes: list[str],
                    gen_stats: dict[str, Any]) -> list[str | None]:
        opts, generator = self.opts, self.generator
        if self.generating:
            _log(opts, f"{t.name}: generating {len(items)} completions (max {max_new} new tokens, {k} shots)")
            before = dict(getattr(generator, "stats", {}) or {})
            with _bar(len(items), f"{t.name} generate", progress=_bars(opts), unit="item") as pb, \
                    bar_per_batch(generator, pb):
                completions = list(generator.generate(prompts, max_new, t.stop, [t.stop_rule(it) for it in items]))
            after = getattr(generator, "stats", {}) or {}
            for key in ("generated_tokens", "generate_s"):
                if key in after:
                    gen_stats[key] = after[key] - before.get(key, 0)
            if gen_stats.get("generate_s"):
                gen_stats["tokens_per_s"] = gen_stats.get("generated_tokens", 0) / gen_stats["generate_s"]
            return completions
        if prev is not None:
            where = samples_path(self.rescore_dir, t.name)
            missing = [it.id for it in items if it.id not in prev]
            if missing:
                raise DataError(f"rescore: {where} lacks item(s) "
                                f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}")
            notes.append(f"re-scored completions from {self.rescore_dir}; likelihoods not recomputed")
            changed = sum(1 for it, p in zip(items, prompts) if prev[it.id].get("prompt") not in (None, p))
            if changed:
                notes.append(f"{changed} item(s) had a different prompt in {self.rescore_dir} "
                             "(other shots or task version)")
            return [prev[it.id]["completion"] for it in items]
        notes.append("likelihood only (generate=False): no completions, no accuracy metrics")
        return [None] * len(items)

    def run_programs(self, t: Task, items: list[Item], completions: list[str | None]) -> tuple[list[Any], list[Any]]:
        """``(extracted code, ExecResult or None)`` per item (code tasks; others: Nones)."""
        extracted: list[Any] = [None] * len(items)
        exec_results: list[Any] = [None] * len(items)
        if not t.executes_code:
            return extracted, exec_results
        progs, where = [], []
        for i, (it, c) in enumerate(zip(items, completions)):
            prog, extracted[i], _how = t.program(it, c or "")
            if prog is not None:
                if self.opts["timeout_s"]:
                    prog.timeout_s = float(self.opts["timeout_s"])
                progs.append(prog)
                where.append(i)
        if progs:
            if self.sandbox is None:
                from .sandbox import Sandbox

                self.sandbox = Sandbox(workers=self.opts["sandbox_workers"], isolation=self.opts["sandbox_isolation"])
            _log(self.opts, f"{t.name}: running {len(progs)} programs in the sandbox")
            with _bar(len(progs), f"{t.name} run programs", progress=_bars(self.opts), unit="prog") as pb:
                ran = self.sandbox.run_many(progs, progress=None if pb.disable else pb.update)
            for i, r in zip(where, ran):
                exec_results[i] = r
        return extracted, exec_results

    def task(self, t: Task, items: list[Item], demos: list[Any], k: int,
             prev: dict[str, dict[str, Any]] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(results.json entry, samples records)`` of task ``t``."""
        opts = self.opts
        t0 = time.time()
        max_new = opts["max_new_tokens"] or t.max_new_tokens
        prompts = [t.render(self.tokenizer, it, demos) for it in items]
        notes: list[str] = []
        gen_stats: dict[str, Any] = {}
        completions = self.completions(t, items, prompts, max_new, k, prev, notes, gen_stats)
        have_text = any(c is not None for c in completions)
        records: list[dict[str, Any]] = []
        if have_text:
            extracted, exec_results = self.run_programs(t, items, completions)
            for i, (it, c) in enumerate(zip(items, completions)):
                records.append({"id": it.id, "prompt": prompts[i], "completion": c,
                                **t.score(it, c or "", exec_results[i], extracted[i])})
        else:
            records = [{"id": it.id, "prompt": p, "completion": None, "gold": _jsonable(it.gold), "scores": {}}
                       for it, p in zip(items, prompts)]
        if opts["likelihood"] and self.rescore_dir is None:
            if any(it.gold_text for it in items):
                _log(opts, f"{t.name}: likelihood of gold and control answers")
                lk = likelihood_scores(self.generator, prompts, items, progress=_bars(opts), desc=f"{t.name} likelihood")
                no_ctrl = sum(1 for it, d in zip(items, lk) if it.gold_text and d["nll_control"] is None)
                if no_ctrl:
                    notes.append(f"{no_ctrl} item(s) without a control: no other item has a different gold answer")
                for rec, d in zip(records, lk):
                    rec["nll"] = d
                    rec["scores"].update({key: d[key] for key in LIKELIHOOD_METRICS if d[key] is not None})
            else:
                notes.append("likelihood skipped: " + (t.likelihood_note or "the task has no gold response"))
        metrics = t.aggregate(items, records) if have_text else Task.aggregate(t, items, records)
        entry = {
            "version": t.version, "kind": t.kind, "description": t.description, "n_items": len(items),
            "metrics": {m: v.to_dict() for m, v in metrics.items()}, "notes": notes,
            "primary_metrics": list(t.primary(list(metrics))), "metric_roles": {m: asdict(t.info(m)) for m in metrics},
            "options": {"shots": k, "max_new_tokens": max_new if self.generating else None,
                        "timeout_s": (opts["timeout_s"] or t.timeout_s) if t.executes_code else None,
                        "stop": list(t.stop), "stop_regex": t.stop_regex, "stop_rule": t.stop_note},
            "generation": gen_stats, "wall_s": round(time.time() - t0, 2),
        }
        if have_text and t.executes_code:
            entry["exec_status"] = _status_counts(records)
        _log(opts, f"{t.name}: " + ", ".join(f"{m}={v.value:.4g}" for m, v in list(metrics.items())[:6]))
        return entry, records


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def _status_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(r.get("status") or "unknown" for r in records).items()))


def metric_table(results: dict[str, Any]) -> str:
    """A plain-text table of every task's metrics (value ± stderr, n)."""
    f = lambda x: "nan" if x is None else f"{x:.4f}"  # noqa: E731
    return "\n".join(f"{name:<18} {m:<20} {f(v.get('value')):>10} ± {f(v.get('stderr')):<8} n={v.get('n')}"
                     for name, t in results.get("tasks", {}).items() for m, v in t.get("metrics", {}).items())


__all__ = ["evaluate", "resolve_options", "expand_task_names", "metric_table", "OPTION_DEFAULTS"]
