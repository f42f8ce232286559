"""``evaluate``: run tasks on a model and write ``results.json`` + ``samples/<task>.jsonl``.

For every task: load the items (first ``limit``), render prompts (few-shot demos as chat turns),
generate greedy completions (unless ``generate=False``), extract answers, run programs in the
sandbox (code tasks, with ``allow_code_execution=True``), score, and — for every task whose items
have a gold response — compute teacher-forced likelihoods:

* ``nll_gold``: mean per-token negative log-likelihood (nats/token) of the item's gold response
  after the item's prompt (:func:`lorasoups.prompts.encode_pair` ids: response + end-of-turn
  token, prompt tokens masked);
* ``nll_control``: the same for a *mismatched* gold response — another item's, chosen by a fixed
  derangement (item ``i`` takes the first item ``(i + k) mod n``, ``k = n//2, n//2+1, ...``, whose
  gold response differs from item ``i``'s);
* ``nll_gap`` = ``nll_control - nll_gold`` per item (positive: the model prefers this item's own
  answer, i.e. knows the item and not only the domain's style); ``gold_preferred`` = share of
  items with ``nll_gold < nll_control``.

Every metric is ``{"value", "stderr", "n"}`` (see :mod:`lorasoups.eval.metrics`); per-item values
are in the samples file (``scores``), so two runs can be compared item by item with
:func:`lorasoups.eval.metrics.paired_compare` / :func:`~lorasoups.eval.metrics.compare_runs`.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import ConfigError, DataError
from ..progress import bar as _bar
from .metrics import Metric, mean_stderr
from .options import EvalOptions
from .registry import Item, Task, get_task, load_tasks
from .samples import _finite, read_samples, write_samples

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


def derangement(golds: Sequence[str | None]) -> list[int | None]:
    """For each item, the index of another item with a different gold response (deterministic).

    Item ``i`` takes the first ``j = (i + k) mod n`` for ``k = max(1, n//2), ...`` with
    ``golds[j] != golds[i]`` (and ``golds[j]`` not None); None when no such item exists.
    """
    n = len(golds)
    out: list[int | None] = []
    for i in range(n):
        pick = None
        if golds[i] is not None:
            start = max(1, n // 2)
            for k in range(start, start + n):
                j = (i + k) % n
                if j != i and golds[j] is not None and golds[j] != golds[i]:
                    pick = j
                    break
        out.append(pick)
    return out


def likelihood_scores(generator: Any, prompts: Sequence[str], items: Sequence[Item], *,
                      progress: bool | None = False, desc: str = "likelihood") -> list[dict[str, Any]]:
    """Per item: gold and control NLLs and their gap (see the module docstring).

    ``progress``: a bar over the scored (prompt, response) pairs (:func:`lorasoups.progress.bar`;
    False: none, None: on a terminal).

    Returns one dict per item: ``{"nll_gold", "nll_control", "nll_gap", "gold_preferred",
    "control_id", "n_tokens_gold"}`` (None values where the item has no gold response).
    """
    golds = [it.gold_text for it in items]
    ctrl = derangement(golds)
    pairs_p, pairs_r, owners = [], [], []
    for i, (p, it) in enumerate(zip(prompts, items)):
        if it.gold_text is None:
            continue
        pairs_p.append(p)
        pairs_r.append(it.gold_text)
        owners.append((i, "gold"))
        if ctrl[i] is not None:
            pairs_p.append(p)
            pairs_r.append(items[ctrl[i]].gold_text)
            owners.append((i, "control"))
    with _bar(len(pairs_p), desc, progress=progress, unit="pair") as pb, _on_batch(generator, pb):
        res = generator.nll(pairs_p, pairs_r) if pairs_p else []
    out: list[dict[str, Any]] = [{"nll_gold": None, "nll_control": None, "nll_gap": None, "gold_preferred": None,
                                  "control_id": None, "n_tokens_gold": None} for _ in items]
    for (i, which), r in zip(owners, res):
        if which == "gold":
            out[i]["nll_gold"], out[i]["n_tokens_gold"] = r["nll"], r["n_tokens"]
        else:
            out[i]["nll_control"] = r["nll"]
            out[i]["control_id"] = items[ctrl[i]].id
    for d in out:
        if d["nll_gold"] is not None and d["nll_control"] is not None:
            d["nll_gap"] = d["nll_control"] - d["nll_gold"]
            d["gold_preferred"] = float(d["nll_gold"] < d["nll_control"])
    return out


def _log(opts: dict[str, Any], msg: str) -> None:
    if opts.get("progress"):
        print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _bars(opts: dict[str, Any]) -> bool | None:
    """The ``progress`` switch for :func:`lorasoups.progress.bar`: None (terminal decides) when the
    evaluation reports progress, False otherwise."""
    return None if opts.get("progress") else False


@contextlib.contextmanager
def _on_batch(generator: Any, pb: Any) -> Iterator[None]:
    """Route the generator's per-batch hook (``on_batch(n_rows)``) to bar ``pb`` for the duration;
    the bar is completed at the end (backends without the hook jump to 100%)."""
    had = hasattr(generator, "on_batch")
    old = getattr(generator, "on_batch", None)
    hooked = False
    if not getattr(pb, "disable", True):
        try:
            generator.on_batch = pb.update
            hooked = True
        except AttributeError:  # a generator that takes no new attributes
            pass
    try:
        yield
        if pb.total is not None and pb.n < pb.total:
            pb.update(pb.total - pb.n)
    finally:
        if hooked:
            if had:
                generator.on_batch = old
            else:
                with contextlib.suppress(AttributeError):
                    del generator.on_batch


def _task_shots(task: Task, shots: int | None) -> int:
    k = task.default_shots if shots is None else shots
    return max(0, min(k, task.max_shots))


def evaluate(base: str | None, adapter: str | Path | None = None, tasks: Sequence[str] | str = (), out: str | Path | None = None,
             *, generator: Any = None, tokenizer: Any = None, **options: Any) -> dict[str, Any]:
    """Evaluate ``base`` (+ ``adapter``) on ``tasks`` and write the results to ``out``.

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
        The ``results.json`` content: ``{"tasks": {name: {"version", "kind", "n_items", "metrics":
        {metric: {"value", "stderr", "n"}}, "notes", "options", ...}}, "options", "model",
        "checksums", "package_versions", "git_commit", "sandbox", "wall_time_s", ...}``.

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
            recs = read_samples(rescore_dir / "samples" / f"{t.name}.jsonl")
            previous[t.name] = {r["id"]: r for r in recs}

    if out is not None:
        from ..paths import check_not_input, check_writable

        ins = [p for p in (adapter, rescore_dir) if p is not None]
        check_not_input(out, ins)
        if Path(out).exists() and not opts["overwrite"]:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_writable(out)  # before the model is loaded and anything is generated

    need_model = generating or (opts["likelihood"] and rescore_dir is None
                                and any(it.gold_text for its, _, _ in data.values() for it in its))
    model_info: dict[str, Any] = {"base": base, "adapter": str(adapter) if adapter else None}
    if generator is None and need_model:
        generator, tokenizer, model_info = _build_generator(base, adapter, opts)
    if tokenizer is None:
        tokenizer = getattr(generator, "tok", None)
    if tokenizer is None:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(base)

    sandbox = None
    results: dict[str, Any] = {"tasks": {}}
    all_samples: dict[str, list[dict[str, Any]]] = {}
    try:
        for t in task_objs:
            t0 = time.time()
            items, demos, k = data[t.name]
            max_new = opts["max_new_tokens"] or t.max_new_tokens
            prompts = [t.render(tokenizer, it, demos) for it in items]
            notes: list[str] = []
            completions: list[str | None]
            gen_stats: dict[str, Any] = {}
            if generating:
                _log(opts, f"{t.name}: generating {len(items)} completions (max {max_new} new tokens, {k} shots)")
                before = dict(getattr(generator, "stats", {}) or {})
                with _bar(len(items), f"{t.name} generate", progress=_bars(opts), unit="item") as pb, \
                        _on_batch(generator, pb):
                    completions = list(generator.generate(prompts, max_new, t.stop, [t.stop_rule(it) for it in items]))
                after = getattr(generator, "stats", {}) or {}
                for key in ("generated_tokens", "generate_s"):
                    if key in after:
                        gen_stats[key] = after[key] - before.get(key, 0)
                if gen_stats.get("generate_s"):
                    gen_stats["tokens_per_s"] = gen_stats.get("generated_tokens", 0) / gen_stats["generate_s"]
            elif rescore_dir is not None:
                prev = previous[t.name]
                missing = [it.id for it in items if it.id not in prev]
                if missing:
                    raise DataError(f"rescore: {rescore_dir}/samples/{t.name}.jsonl lacks item(s) "
                                    f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}")
                completions = [prev[it.id]["completion"] for it in items]
                notes.append(f"re-scored completions from {rescore_dir}; likelihoods not recomputed")
                changed = sum(1 for it, p in zip(items, prompts) if prev[it.id].get("prompt") not in (None, p))
                if changed:
                    notes.append(f"{changed} item(s) had a different prompt in {rescore_dir} "
                                 "(other shots or task version)")
            else:
                completions = [None] * len(items)
                notes.append("likelihood only (generate=False): no completions, no accuracy metrics")

            records: list[dict[str, Any]] = []
            have_text = any(c is not None for c in completions)
            if have_text:
                extracted: list[Any] = [None] * len(items)
                exec_results: list[Any] = [None] * len(items)
                if t.executes_code:
                    progs, where = [], []
                    for i, (it, c) in enumerate(zip(items, completions)):
                        prog, code, _how = t.program(it, c or "")
                        extracted[i] = code
                        if prog is not None:
                            if opts["timeout_s"]:
                                prog.timeout_s = float(opts["timeout_s"])
                            progs.append(prog)
                            where.append(i)
                    if progs:
                        if sandbox is None:
                            from .sandbox import Sandbox

                            sandbox = Sandbox(workers=opts["sandbox_workers"], isolation=opts["sandbox_isolation"])
                        _log(opts, f"{t.name}: running {len(progs)} programs in the sandbox")
                        with _bar(len(progs), f"{t.name} run programs", progress=_bars(opts), unit="prog") as pb:
                            ran = sandbox.run_many(progs, progress=None if pb.disable else pb.update)
                        for i, r in zip(where, ran):
                            exec_results[i] = r
                for i, (it, c) in enumerate(zip(items, completions)):
                    rec = {"id": it.id, "prompt": prompts[i], "completion": c}
                    rec.update(t.score(it, c or "", exec_results[i], extracted[i]))
                    records.append(rec)
            else:
                for i, it in enumerate(items):
                    records.append({"id": it.id, "prompt": prompts[i], "completion": None, "gold": _jsonable(it.gold),
                                    "scores": {}})

            if opts["likelihood"] and rescore_dir is None:
                if any(it.gold_text for it in items):
                    _log(opts, f"{t.name}: likelihood of gold and control answers")
                    lk = likelihood_scores(generator, prompts, items, progress=_bars(opts), desc=f"{t.name} likelihood")
                    no_ctrl = sum(1 for it, d in zip(items, lk) if it.gold_text and d["nll_control"] is None)
                    if no_ctrl:
                        notes.append(f"{no_ctrl} item(s) without a control: no other item has a different gold answer")
                    for rec, d in zip(records, lk):
                        rec["nll"] = d
                        for key in ("nll_gold", "nll_control", "nll_gap", "gold_preferred"):
                            if d[key] is not None:
                                rec["scores"][key] = d[key]
                else:
                    notes.append("likelihood skipped: " + (t.likelihood_note or "the task has no gold response"))

            if have_text:
                metrics = t.aggregate(items, records)
            else:
                metrics = Task.aggregate(t, items, records)
            entry = {
                "version": t.version, "kind": t.kind, "description": t.description, "n_items": len(items),
                "metrics": metrics, "notes": notes, "primary_metrics": list(t.primary()),
                "directions": {m: t.direction(m) for m in metrics},
                "options": {"shots": k, "max_new_tokens": max_new if generating else None,
                            "timeout_s": (opts["timeout_s"] or t.timeout_s) if t.executes_code else None,
                            "stop": list(t.stop), "stop_regex": t.stop_regex, "stop_rule": t.stop_note},
                "generation": gen_stats, "wall_s": round(time.time() - t0, 2),
            }
            if have_text and t.executes_code:
                entry["exec_status"] = _status_counts(records)
            results["tasks"][t.name] = entry
            all_samples[t.name] = records
            _log(opts, f"{t.name}: " + ", ".join(f"{m}={v['value']:.4g}" for m, v in list(metrics.items())[:6]))
        if sandbox is not None:
            results["sandbox"] = sandbox.info
    finally:
        if sandbox is not None:
            sandbox.close()

    from ..provenance import git_commit, package_versions

    results["options"] = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()},
                          "tasks": names, "base": base, "adapter": str(adapter) if adapter else None}
    results["model"] = model_info
    if out is not None and generator is not None and model_info.get("base_path"):
        from .model import checksums

        results["checksums"] = checksums(model_info)
    results["package_versions"] = package_versions()
    results["git_commit"] = git_commit()
    results["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["wall_time_s"] = round(time.time() - t_start, 2)
    results = _finite(results)
    if out is not None:
        from ..paths import atomic_dir

        with atomic_dir(out, overwrite=opts["overwrite"]) as tmp:
            for name, recs in all_samples.items():
                write_samples(tmp / "samples" / f"{name}.jsonl", recs)
            (tmp / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        results["out"] = str(out)
    return results


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def _status_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    c: dict[str, int] = {}
    for r in records:
        s = r.get("status") or "unknown"
        c[s] = c.get(s, 0) + 1
    return dict(sorted(c.items()))


def base_for_adapter(adapter: str | Path | None) -> str:
    """The base model to evaluate ``adapter`` on when none is given: the one the adapter records
    (a line on stderr says so), else the default embedded model."""
    from ..models import DEFAULT_BASE

    if adapter is None:
        return DEFAULT_BASE
    from ..io.card import recorded_base

    rec = recorded_base(adapter)
    if rec:
        print(f"[eval] base model: {rec} (recorded by the adapter {adapter}; --base to choose another)",
              file=sys.stderr, flush=True)
        return rec
    print(f"[eval] base model: {DEFAULT_BASE} (the adapter {adapter} records none)", file=sys.stderr, flush=True)
    return DEFAULT_BASE


def pick_backend(backend: str, device: str) -> str:
    """``hf`` or ``vllm`` for a ``backend`` option: ``auto`` is vllm when the ``vllm`` package is
    installed and the device is CUDA, else hf."""
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if device.startswith("cuda") and importlib.util.find_spec("vllm") is not None else "hf"


def _build_generator(base: str, adapter: Any, opts: dict[str, Any]):
    """The backend for ``opts['backend']``: ``(generator, tokenizer, model_info)``."""
    from ..devices import eval_bf16, resolve_device

    device = resolve_device(opts["device"])
    backend = pick_backend(opts["backend"], device)
    if backend == "vllm":
        from ..models import load_tokenizer, resolve_base
        from .generate import VLLMGenerator
        from .model import adapter_kind

        if adapter is not None and adapter_kind(adapter) == "moe":
            raise ConfigError(f"{adapter}: vLLM cannot serve an MoE folder; use --backend hf")
        tok = load_tokenizer(base)
        gen = VLLMGenerator(resolve_base(base), tok, str(adapter) if adapter else None)
        info = {"base": base, "base_path": resolve_base(base), "adapter": str(adapter) if adapter else None,
                "adapter_kind": "lora" if adapter else None, "backend": "vllm", "device": device}
        return gen, tok, info
    from .generate import HFGenerator
    from .model import load_eval_model

    model, tok, info = load_eval_model(base, adapter, merge_lora=opts["merge_lora"], device=device)
    bf16 = opts["bf16"] if opts["bf16"] is not None else eval_bf16(opts["precision"])
    gen = HFGenerator(model, tok, batch_size=opts["batch_size"], prefix_cache=opts["prefix_cache"], bf16=bf16)
    info = {**info, "backend": "hf", "device": device, "bf16_autocast": gen.bf16}
    return gen, tok, info


def metric_table(results: dict[str, Any]) -> str:
    """A plain-text table of every task's metrics (value ± stderr, n)."""
    lines = []
    for name, t in results.get("tasks", {}).items():
        for m, v in t.get("metrics", {}).items():
            val, se = v.get("value"), v.get("stderr")
            vs = "nan" if val is None else f"{val:.4f}"
            ss = "nan" if se is None else f"{se:.4f}"
            lines.append(f"{name:<18} {m:<20} {vs:>10} ± {ss:<8} n={v.get('n')}")
    return "\n".join(lines)


__all__ = ["evaluate", "resolve_options", "expand_task_names", "derangement", "likelihood_scores", "metric_table",
           "OPTION_DEFAULTS", "Metric", "mean_stderr"]
