"""The experiment runner: plan -> (cached) steps -> results.json / md / csv / png.

Every step's output is written atomically and recorded with a content key (see :mod:`.cache`), so
an interrupted run resumes at the first unfinished step, a finished run re-runs in seconds doing
nothing, and deleting one output re-does only that step.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ExperimentConfig, thaw
from ..errors import LorasoupsError
from ..paths import atomic_write_text, find_data_dir
from .cache import FileHasher, copy_finished, hash_obj, is_done, read_marker, remove_path, write_marker
from .memory import PeakRSS, maxrss_mib, release_memory, rss_mib
from .executors import (composite_data, composite_params, default_executors, skill_train_options,
                        split_eval_output)
from .plan import Step, build_plan, method_info, method_output, stages


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class RunContext:
    """What every step needs: the config, folders, the resolved base model and the hasher."""

    cfg: ExperimentConfig
    run_dir: Path
    data_dir: Path
    base: str
    hasher: FileHasher
    base_fingerprint: dict[str, Any]
    log: Callable[[str], None] = print
    digests: dict[str, str] = field(default_factory=dict)
    device: str | None = None


class Runner:
    """Runs one experiment into ``run_dir``.

    Args:
        cfg: a validated config (:func:`lorasoups.config.load_config`).
        run_dir: output folder (created; re-used for resume and caching).
        data_dir: data folder override (default: ``cfg.data_dir``, then the usual search).
        executors: stage -> function(step, ctx) (tests may replace them); a stage without its own
            runs ``procedure`` (any registered learned procedure).
        log: where progress lines go (default: print to stdout).
        force: re-do every step even when its marker matches.
        device: ``--device`` for every training and evaluation step (None: each function's
            default, auto); not part of any step's hash.
        seed_from: another run folder (``--from``): before running, copy into ``run_dir`` every
            finished output of that run that this plan also has (same step id or evaluation task,
            with its marker) and that ``run_dir`` does not hold yet (:meth:`seed`); the usual keys then
            decide what is re-used. The other folder is only read.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, *, data_dir: str | Path | None = None,
                 executors: dict[str, Callable[..., dict[str, Any]]] | None = None,
                 log: Callable[[str], None] | None = None, force: bool = False, device: str | None = None,
                 seed_from: str | Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self.data_dir_arg = data_dir if data_dir is not None else cfg.data_dir
        self.executors = {**default_executors(), **(executors or {})}
        self.log = log or (lambda s: print(s, flush=True))
        self.force = force
        self.device = device
        self.seed_from = Path(seed_from).resolve() if seed_from is not None else None
        if self.seed_from is not None:
            if self.seed_from == self.run_dir:
                raise LorasoupsError(f"--from {seed_from}: that is the run folder itself")
            if not (self.seed_from / "steps").is_dir():
                raise LorasoupsError(f"--from {seed_from}: not a run folder (no steps/ inside)")
        self.steps = build_plan(cfg, self.run_dir)
        self.executed: list[str] = []  # ids of steps that did work in this run (tests read it)

    # -- keys ---------------------------------------------------------------------------------

    def _data_files(self, ctx: RunContext, specs: list[str]) -> list[dict[str, Any]]:
        from ..train.data import parse_data_spec, resolve_path

        out = []
        for s in specs:
            p, _ = resolve_path(parse_data_spec(s), ctx.data_dir)
            out.append({"spec": s, "sha256": ctx.hasher.file(p)})
        return out

    def _output_digest(self, ctx: RunContext, step_id: str) -> str:
        if step_id not in ctx.digests:
            st = self._by_id[step_id]
            ctx.digests[step_id] = ctx.hasher.folder_digest(st.out)
        return ctx.digests[step_id]

    def step_key(self, step: Step, ctx: RunContext) -> dict[str, Any]:
        """The document whose hash decides whether ``step`` must run (see :mod:`.cache`)."""
        doc: dict[str, Any] = {"stage": step.stage, "base": ctx.base_fingerprint}
        if step.stage == "train":
            sk = ctx.cfg.skills[step.skill]
            doc.update(options=skill_train_options(ctx, step.skill), data=self._data_files(ctx, list(sk.data)))
        elif step.stage == "eval":
            raise AssertionError("eval keys are per task; see _task_key")
        else:
            m = step.method
            doc.update(method=m.method, params=thaw(composite_params(ctx, step)),
                       inputs=[self._output_digest(ctx, d) for d in step.deps])
            info = method_info(m)
            if info.refers_to_inputs:
                # e.g. an MoE folder records the experts' file checksums byte for byte and refuses
                # experts whose files changed, so its key follows their exact bytes
                doc["expert_files"] = [{k: v for k, v in ctx.hasher.folder(self._by_id[d].out).items()
                                        if k in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")}
                                       for d in step.deps]
            if info.kind != "merge":  # a learned procedure reads data
                doc["data"] = self._data_files(ctx, composite_data(ctx, step))
        return doc

    def _task_key(self, step: Step, ctx: RunContext, task_label: str) -> dict[str, Any]:
        t = next(t for t in ctx.cfg.tasks if t.label == task_label)
        version = None
        try:
            from ..eval.registry import load_tasks

            version = getattr(load_tasks().get(t.task), "version", None)
        except (ImportError, KeyError):
            pass
        inputs = []
        for d in step.deps:  # the evaluated folder and, for MoE, the experts it points to
            inputs.append(self._output_digest(ctx, d))
            for dd in self._by_id[d].deps:
                inputs.append(self._output_digest(ctx, dd))
        return {"stage": "eval", "base": ctx.base_fingerprint, "task": t.task, "version": version,
                "options": thaw(t.options), "allow_code_execution": ctx.cfg.allow_code_execution,
                "inputs": inputs}

    # -- running ------------------------------------------------------------------------------

    def marker(self, step_id: str, task_label: str | None = None) -> Path:
        return self.run_dir / "steps" / (f"{step_id}/{task_label}.json" if task_label else f"{step_id}.json")

    def _steplog(self, rec: dict[str, Any]) -> None:
        p = self.run_dir / "steps.jsonl"
        with open(p, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": _now(), **rec}, default=str) + "\n")

    def _context(self) -> RunContext:
        from ..models import resolve_base

        data_dir = find_data_dir(self.data_dir_arg)
        base = resolve_base(self.cfg.base)
        hasher = FileHasher(self.run_dir / "steps" / "file_hashes.json")
        return RunContext(self.cfg, self.run_dir, data_dir, base, hasher, hasher.model_fingerprint(base), self.log,
                          device=self.device)

    def run(self) -> dict[str, Any]:
        """Run every step that is not done, then collect and write the results.

        Returns:
            the results document (also written to ``run_dir/results.json``).

        Raises:
            LorasoupsError (or what an API raised): a step failed; finished steps stay cached and
            the log names the failed step.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "steps").mkdir(exist_ok=True)
        with _run_lock(self.run_dir):
            return self._run()

    def seed(self, src: Path) -> list[str]:
        """Copy into this run folder the outputs this plan shares with run folder ``src``
        (:func:`.cache.copy_finished`). Returns the copied ids (``eval/<label>/<task>`` for tasks)."""
        return copy_finished(src, self.run_dir, self.steps, [t.label for t in self.cfg.tasks])

    def _run(self) -> dict[str, Any]:
        self._by_id = {s.id: s for s in self.steps}
        if self.seed_from is not None:
            copied = self.seed(self.seed_from)
            self.log(f"seeded from {self.seed_from}: {len(copied)} finished outputs copied "
                     f"(their keys are checked as usual)")
            self._steplog({"event": "seeded", "from": str(self.seed_from), "copied": copied})
        atomic_write_text(self.run_dir / "config.resolved.json", json.dumps(self.cfg.to_dict(), indent=1, default=str))
        t_start = time.time()
        ctx = self._context()
        n = len(self.steps)
        self.log(f"lorasoups run: {self.cfg.name}" + (f" (preset {self.cfg.preset})" if self.cfg.preset else "")
                 + f": {n} steps -> {self.run_dir}")
        self._steplog({"event": "start", "n_steps": n, "config": self.cfg.source, "preset": self.cfg.preset})
        timings: dict[str, dict[str, Any]] = {}
        for i, step in enumerate(self.steps, 1):
            prefix = f"step {i}/{n}: {step.title}"
            t0 = time.time()
            mem = PeakRSS()
            try:
                with mem:
                    if step.stage == "eval":
                        did = self._run_eval(step, ctx, prefix)
                    else:
                        did = self._run_build(step, ctx, prefix)
                    release_memory()  # models of this step are gone: return their pages to the OS
            except BaseException as e:
                self._steplog({"event": "failed", "step": i, "of": n, "id": step.id, "stage": step.stage,
                               "wall_s": round(time.time() - t0, 2), "error": f"{type(e).__name__}: {e}",
                               "traceback": traceback.format_exc(limit=8) if not isinstance(e, KeyboardInterrupt) else None})
                ctx.hasher.save()
                if isinstance(e, LorasoupsError):
                    raise LorasoupsError(f"step {i}/{n} ({step.id}) failed: {e}. Finished steps are kept; "
                                         f"re-run the same command to resume.") from e
                raise
            wall = round(time.time() - t0, 2)
            timings[step.id] = {"stage": step.stage, "cached": not did, "wall_s": wall,
                                "peak_rss_mib": mem.peak_mib, "rss_after_mib": rss_mib()}
            self._steplog({"event": "done" if did else "cached", "step": i, "of": n, "id": step.id,
                           "stage": step.stage, "wall_s": wall, "peak_rss_mib": mem.peak_mib})
            ctx.hasher.save()
        results = self.collect(ctx, timings, time.time() - t_start)
        from ..report import write_report

        atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=1, default=str))
        write_report(results, self.run_dir)
        self._steplog({"event": "finished", "wall_s": round(time.time() - t_start, 2)})
        return results

    def _run_build(self, step: Step, ctx: RunContext, prefix: str) -> bool:
        key = hash_obj(self.step_key(step, ctx))
        marker = self.marker(step.id)
        if not self.force and is_done(marker, step.out, key):
            self.log(f"{prefix} (cached)")
            return False
        remove_path(marker)
        # An interrupted attempt with the same key left checkpoints behind: continue from them.
        started = marker.with_name(marker.stem + ".started.json")
        prev = read_marker(started)
        step.extra["resume"] = bool(prev and prev.get("key") == key)
        resumable = step.stage == "train" or (step.method is not None and method_info(step.method).resumable)
        self.log(prefix + (" (resuming)" if step.extra["resume"] and resumable else ""))
        write_marker(started, {"key": key, "id": step.id, "started": _now()})
        t0 = time.time()
        info = self.executors.get(step.stage, self.executors["procedure"])(step, ctx) or {}
        if not step.out.exists():
            raise LorasoupsError(f"step {step.id}: finished without writing {step.out}")
        ctx.digests.pop(step.id, None)
        write_marker(marker, {"key": key, "id": step.id, "stage": step.stage, "out": str(step.out),
                              "wall_s": round(time.time() - t0, 2), "finished": _now(), "info": info})
        remove_path(started)
        self.executed.append(step.id)
        self.log(f"  done in {time.time() - t0:.1f} s -> {step.out}")
        return True

    def _run_eval(self, step: Step, ctx: RunContext, prefix: str) -> bool:
        """Evaluate one method on every task; tasks whose marker matches are skipped. Tasks with the
        same options go into one ``evaluate`` call (one model load)."""
        todo: dict[str, str] = {}
        for t in ctx.cfg.tasks:
            key = hash_obj(self._task_key(step, ctx, t.label))
            if self.force or not is_done(self.marker(step.id, t.label), step.out / t.label, key):
                todo[t.label] = key
        if not todo:
            self.log(f"{prefix} (cached)")
            return False
        cached = [t.label for t in ctx.cfg.tasks if t.label not in todo]
        self.log(prefix + (f" (cached: {', '.join(cached)})" if cached else ""))
        adapter = method_output(ctx.cfg, self.run_dir, step.method)
        step.out.mkdir(parents=True, exist_ok=True)
        # A method whose weights are bit-identical to an already evaluated one (same key: same
        # model, task and options) re-uses that evaluation instead of computing it again.
        if not self.force:
            for lb in list(todo):
                src = self._same_eval(step.id, lb, todo[lb])
                if src is not None:
                    remove_path(step.out / lb)
                    shutil.copytree(src, step.out / lb)
                    write_marker(self.marker(step.id, lb), {"key": todo[lb], "id": step.id, "task": lb,
                                                           "finished": _now(), "copied_from": str(src)})
                    self.log(f"  {lb}: same weights as {src.parent.name}: results re-used")
                    del todo[lb]
            if not todo:
                self.executed.append(step.id)
                return True
        # group: same options and distinct task names -> one evaluate() call
        groups: list[tuple[dict[str, Any], dict[str, str]]] = []
        for t in ctx.cfg.tasks:
            if t.label not in todo:
                continue
            opts = thaw(t.options)
            for g_opts, g_tasks in groups:
                if g_opts == opts and t.task not in g_tasks.values():
                    g_tasks[t.label] = t.task
                    break
            else:
                groups.append((opts, {t.label: t.task}))
        t0 = time.time()
        for gi, (opts, labels) in enumerate(groups, 1):
            if len(groups) > 1:
                self.log(f"  evaluate call {gi}/{len(groups)}: {', '.join(labels)}")
            tmp = Path(tempfile.mkdtemp(prefix=".eval-tmp-", dir=step.out))
            try:
                t_call = time.time()
                self.executors["evaluate"](ctx, adapter, list(labels.values()), tmp / "out", opts)
                share = round((time.time() - t_call) / len(labels), 2)
                for lb in labels:
                    remove_path(self.marker(step.id, lb))
                split_eval_output(tmp / "out", labels, {lb: step.out / lb for lb in labels})
                for lb in labels:
                    write_marker(self.marker(step.id, lb), {"key": todo[lb], "id": step.id, "task": lb,
                                                           "finished": _now(), "wall_s": share})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.executed.append(step.id)
        self.log(f"  done in {time.time() - t0:.1f} s -> {step.out}")
        return True

    def _same_eval(self, step_id: str, task_label: str, key: str) -> Path | None:
        """The output folder of another method's finished evaluation with the same key, if any."""
        for st in self.steps:
            if st.stage != "eval" or st.id == step_id:
                continue
            m = read_marker(self.marker(st.id, task_label))
            if m and m.get("key") == key and (st.out / task_label / "results.json").is_file():
                return st.out / task_label
        return None

    # -- results ------------------------------------------------------------------------------

    def collect(self, ctx: RunContext, timings: dict[str, dict[str, Any]], wall: float) -> dict[str, Any]:
        """Assemble ``results.json``: config, provenance, methods, metrics, timings, analysis."""
        import torch

        from ..eval.samples import SAMPLES_FILE
        from ..provenance import provenance
        from ..report.analysis import analyse

        cfg = ctx.cfg
        results: dict[str, dict[str, Any]] = {}
        samples: dict[str, dict[str, str]] = {}
        for m in cfg.methods:
            results[m.label] = {}
            samples[m.label] = {}
            for t in cfg.tasks:
                d = self.run_dir / "eval" / m.label / t.label
                doc = json.loads((d / "results.json").read_text(encoding="utf-8"))
                results[m.label][t.label] = (doc.get("tasks") or {}).get(t.task, {})
                sf = d / SAMPLES_FILE
                if sf.is_file():
                    samples[m.label][t.label] = str(sf.relative_to(self.run_dir))
        methods = {}
        for m in cfg.methods:
            out = method_output(cfg, self.run_dir, m)
            entry: dict[str, Any] = {"method": m.method, "kind": m.kind, "skills": list(m.skills),
                                     "params": thaw(m.params), "description": m.description,
                                     "output": str(out.relative_to(self.run_dir)) if out else None}
            if out is not None and out.exists():
                entry["checksums"] = ctx.hasher.folder(out)
            for extra in ("cat_coefficients.json", "lorahub_weights.json"):
                if out is not None and (out / extra).is_file():
                    try:
                        entry[extra.split(".")[0]] = _summary(json.loads((out / extra).read_text(encoding="utf-8")))
                    except (OSError, json.JSONDecodeError):
                        pass
            methods[m.label] = entry
        stage_wall: dict[str, float] = {s: 0.0 for s in stages()}
        for sid, tmg in timings.items():
            if not tmg["cached"]:
                stage_wall[tmg["stage"]] = round(stage_wall.get(tmg["stage"], 0.0) + tmg["wall_s"], 2)
        # wall time each output took when it was produced (cached steps included)
        produced: dict[str, float] = {s: 0.0 for s in stages()}
        for st in self.steps:
            if st.stage == "eval":
                for t in cfg.tasks:
                    mk = read_marker(self.marker(st.id, t.label))
                    if mk and "wall_s" in mk and not mk.get("copied_from"):
                        produced["eval"] = round(produced["eval"] + float(mk["wall_s"]), 2)
                continue
            mk = read_marker(self.marker(st.id))
            if mk and "wall_s" in mk:
                produced[st.stage] = round(produced.get(st.stage, 0.0) + float(mk["wall_s"]), 2)
        doc: dict[str, Any] = {
            "name": cfg.name,
            "description": cfg.description,
            "preset": cfg.preset,
            "config_file": cfg.source,
            "config": cfg.to_dict(),
            "base": cfg.base,
            "methods": methods,
            "tasks": {t.label: {"task": t.task, "role": t.role, "skill": t.skill, "options": thaw(t.options)}
                      for t in cfg.tasks},
            "columns": [{"label": c.label, "task": c.task, "metric": c.metric, "better": c.better,
                         "target": c.target} for c in cfg.columns],
            "results": results,
            "samples": samples,
            "timing": {"this_run_wall_s": round(wall, 2), "this_run_stage_wall_s": stage_wall,
                       "build_wall_s_when_produced": produced, "steps": timings},
            "memory": memory_summary(timings),
            "provenance": provenance(
                base_model={"name": cfg.base, "resolved": ctx.base, **ctx.base_fingerprint},
                data_dir=str(ctx.data_dir), data_files=self._all_data_files(ctx),
                host={"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                      "python": sys.version.split()[0]}),
        }
        doc["analysis"] = analyse(doc, self.run_dir)
        return doc

    def _all_data_files(self, ctx: RunContext) -> dict[str, str]:
        specs: list[str] = []
        for s in ctx.cfg.skills.values():
            specs.extend(s.data)
        for m in ctx.cfg.methods:
            specs.extend(m.data)
        out: dict[str, str] = {}
        for f in self._data_files(ctx, list(dict.fromkeys(specs))):
            out[f["spec"]] = f["sha256"]
        return out


def memory_summary(timings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``results.json["memory"]``: peak RSS per stage over this run's steps (MiB, process tree,
    sampled; see :mod:`lorasoups.experiment.memory` for what each figure measures) and the kernel's
    whole-process high-water marks."""
    per_stage: dict[str, float] = {}
    for tmg in timings.values():
        if "peak_rss_mib" in tmg:
            per_stage[tmg["stage"]] = max(per_stage.get(tmg["stage"], 0.0), tmg["peak_rss_mib"])
    hw = maxrss_mib()
    return {"stage_peak_rss_mib": per_stage,
            "run_peak_rss_mib": max(per_stage.values(), default=0.0),
            "process_peak_rss_mib": hw["self"], "children_peak_rss_mib": hw["children"],
            "measures": "stage_peak_rss_mib / run_peak_rss_mib: largest RSS of this process plus its live "
                        "descendants (summed), sampled every 0.1 s during each step of this run (cached steps "
                        "included); process_peak_rss_mib / children_peak_rss_mib: getrusage ru_maxrss of this "
                        "process and of its largest waited-for child over the process's whole life (MiB)"}


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Hold an exclusive OS lock on ``RUN_DIR/.lock`` (``filelock``) for the run; the operating
    system releases it when the process ends, so a crashed run leaves no stale lock.

    Raises:
        LorasoupsError: another ``lorasoups run`` holds the folder.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(run_dir / ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LorasoupsError(f"{run_dir} is in use by another `lorasoups run`; "
                             f"wait for it or use another --out") from None
    try:
        yield
    finally:
        lock.release()


def _summary(obj: Any, limit: int = 2000) -> Any:
    """A small JSON-able excerpt of a (possibly big) info document."""
    s = json.dumps(obj, default=str)
    if len(s) <= limit:
        return obj
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if len(json.dumps(v, default=str)) <= 400}
    return None


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Convenience: ``Runner(cfg, run_dir, **kwargs).run()``."""
    return Runner(cfg, run_dir, **kwargs).run()
