"""Runner step graph and cache with fake executors (no training): re-runs do nothing, deleting one
output re-does only that step, an interrupted run resumes, results/report files are written."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from lorasoups.config import Known, build_config
from lorasoups.errors import LorasoupsError
from lorasoups.experiment import Runner
from lorasoups.report import rebuild_report


def _write_records(path: Path, n: int, tag: str) -> Path:
    recs = [{"instruction": f"{tag} question {i}", "input": "", "output": f"{tag} answer {i}"} for i in range(n)]
    path.write_text(json.dumps(recs))
    return path


def _known() -> Known:
    return Known(tasks={"t_target": {"nll", "acc"}, "t_skill": {"nll"}}, datasets=None)


def _cfg(tmp_path: Path, **over):
    a = _write_records(tmp_path / "a.json", 8, "alpha")
    b = _write_records(tmp_path / "b.json", 8, "beta")
    raw = {
        "name": "fake", "base": "tiny", "seed": 0,
        "train": {"r": 2, "max_steps": 3},
        "skills": {"a": {"data": [str(a)]}, "b": {"data": [str(b)]}},
        "methods": {
            "base": {}, "a": {"method": "skill", "skill": "a"}, "b": {"method": "skill", "skill": "b"},
            "linear": {"params": {"weights": [0.5, 0.5]}},
            "ties": {"params": {"density": 0.5}},
            "cat": {"params": {"max_steps": 2}},
        },
        "eval": {"options": {"limit": 4}, "tasks": {"t_target": {"role": "target"}, "t_skill": {"role": "skill", "skill": "a"}}},
        "report": {"columns": [{"task": "t_target", "metric": "nll", "better": "lower"},
                               {"task": "t_target", "metric": "acc", "better": "higher"},
                               {"task": "t_skill", "metric": "nll", "better": "lower"}]},
    }
    raw.update(over)
    return build_config(raw, known=_known(), source=str(tmp_path / "fake.yaml"))


class Fakes:
    """Executors that write small PEFT-looking folders and canned evaluation results."""

    def __init__(self, tiny_dir: Path):
        self.tiny_dir = tiny_dir
        self.calls: list[str] = []
        self.fail_on: str | None = None

    def _adapter(self, out: Path, seed: int) -> None:
        from lorasoups.paths import atomic_dir

        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "adapter_config.json").write_text(json.dumps({"r": 2, "seed": seed}))
            (tmp / "adapter_model.safetensors").write_bytes(bytes([seed % 256]) * 16)
            (tmp / "train_info.json").write_text(json.dumps({"wall": random.random()}))  # noise: not in digest

    def build(self, step, ctx):
        self.calls.append(step.id)
        if self.fail_on == step.id:
            raise LorasoupsError(f"fake failure in {step.id}")
        self._adapter(step.out, sum(map(ord, step.label)))
        return {}

    def evaluate(self, ctx, adapter, tasks, out, options):
        """Writes what ``lorasoups.eval.runner.evaluate`` writes: one folder per task."""
        self.calls.append(f"evaluate:{adapter.name if adapter else 'base'}:{','.join(tasks)}")
        rng = random.Random(str(adapter))
        for t in tasks:
            (out / t).mkdir(parents=True)
            items = [{"id": i, "completion": "x", "scores": {"nll": rng.uniform(1, 2), "acc": float(rng.random() < 0.5)}}
                     for i in range(options["limit"])]
            (out / t / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
            mets = {}
            for k in ("nll", "acc"):
                v = [x["scores"][k] for x in items]
                m = sum(v) / len(v)
                se = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))
                mets[k] = {"value": m, "stderr": se, "n": len(v)}
            entry = {"metrics": mets, "primary_metrics": ["nll"],
                     "metric_roles": {"nll": {"role": "primary", "better": "lower"},
                                      "acc": {"role": "score", "better": "higher"}}}
            (out / t / "results.json").write_text(json.dumps({"tasks": {t: entry}}))

    def executors(self):
        return {k: self.build for k in ("train", "data_mix", "merge", "cat", "lorahub", "moe")} | {"evaluate": self.evaluate}


def _run(cfg, run_dir, fakes, **kw):
    r = Runner(cfg, run_dir, executors=fakes.executors(), log=lambda s: None, **kw)
    return r, r.run()


def test_plan_and_outputs(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path)
    fakes = Fakes(tiny_dir)
    r, doc = _run(cfg, tmp_path / "run", fakes)
    ids = [s.id for s in r.steps]
    assert ids[:2] == ["train/a", "train/b"]
    assert set(ids) == {"train/a", "train/b", "build/linear", "build/ties", "build/cat",
                        "eval/base", "eval/a", "eval/b", "eval/linear", "eval/ties", "eval/cat"}
    # one evaluate call per method (both tasks share options)
    assert sum(c.startswith("evaluate:") for c in fakes.calls) == 6
    run = tmp_path / "run"
    for f in ("results.json", "results.md", "results.csv", "results.png", "steps.jsonl"):
        assert (run / f).is_file(), f
    assert set(doc["results"]) == {"base", "a", "b", "linear", "ties", "cat"}
    assert doc["results"]["ties"]["t_target"]["metrics"]["nll"]["n"] == 4
    assert doc["provenance"]["package_versions"]["torch"]
    assert "adapter_model.safetensors" in doc["methods"]["ties"]["checksums"]
    md = (run / "results.md").read_text()
    assert "| ties |" in md and "**" in md
    # super-linearity rows for each composite on each target column, paired diffs from samples
    assert {(x["method"], x["column"]) for x in doc["analysis"]["superlinearity"]} >= {("ties", "t_target nll")}
    assert any(p["vs"] == "base" and p["method"] == "cat" for p in doc["analysis"]["paired"])
    lines = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines].count("done") == len(ids)


def test_rerun_does_nothing_and_delete_redoes_one(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path)
    fakes = Fakes(tiny_dir)
    _run(cfg, tmp_path / "run", fakes)
    fakes.calls.clear()
    r, _ = _run(cfg, tmp_path / "run", fakes)
    assert fakes.calls == [] and r.executed == []
    # delete one method's adapter: only that build re-runs; same weights -> its eval stays cached
    shutil.rmtree(tmp_path / "run" / "methods" / "ties")
    r, _ = _run(cfg, tmp_path / "run", fakes)
    assert fakes.calls == ["build/ties"] and r.executed == ["build/ties"]
    # delete one method's evaluation: only that evaluation re-runs
    fakes.calls.clear()
    shutil.rmtree(tmp_path / "run" / "eval" / "cat")
    r, _ = _run(cfg, tmp_path / "run", fakes)
    assert r.executed == ["eval/cat"] and fakes.calls == ["evaluate:cat:t_target,t_skill"]


def test_changed_option_redoes_dependents(tmp_path, tiny_dir):
    fakes = Fakes(tiny_dir)
    _run(_cfg(tmp_path), tmp_path / "run", fakes)
    fakes.calls.clear()
    methods2 = {
        "base": {}, "a": {"method": "skill", "skill": "a"}, "b": {"method": "skill", "skill": "b"},
        "linear": {"params": {"weights": [0.5, 0.5]}}, "ties": {"params": {"density": 0.3}},
        "cat": {"params": {"max_steps": 2}}}
    cfg2 = _cfg(tmp_path, methods=methods2)
    r, _ = _run(cfg2, tmp_path / "run", fakes)
    assert r.executed == ["build/ties"]  # fake writes identical bytes -> eval cached
    # a changed eval option re-evaluates every method, and only that
    fakes.calls.clear()
    cfg3 = _cfg(tmp_path, methods=methods2, eval={"options": {"limit": 5}, "tasks": {"t_target": {"role": "target"},
                                                                   "t_skill": {"role": "skill", "skill": "a"}}})
    r, doc = _run(cfg3, tmp_path / "run", fakes)
    assert all(s.startswith("eval/") for s in r.executed) and len(r.executed) == 6
    assert doc["results"]["a"]["t_skill"]["metrics"]["nll"]["n"] == 5


def test_interrupted_run_resumes(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path)
    fakes = Fakes(tiny_dir)
    fakes.fail_on = "build/ties"
    with pytest.raises(LorasoupsError, match="build/ties"):
        _run(cfg, tmp_path / "run", fakes)
    done_before = list(fakes.calls)
    assert "train/a" in done_before and not (tmp_path / "run" / "results.json").exists()
    fakes.fail_on = None
    fakes.calls.clear()
    r, _ = _run(cfg, tmp_path / "run", fakes)
    assert "train/a" not in r.executed and "train/b" not in r.executed and "build/linear" not in r.executed
    assert "build/ties" in r.executed
    log = (tmp_path / "run" / "steps.jsonl").read_text()
    assert '"failed"' in log


def test_report_rebuild(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path)
    _run(cfg, tmp_path / "run", Fakes(tiny_dir))
    run = tmp_path / "run"
    for f in ("results.md", "results.csv", "results.png"):
        (run / f).unlink()
    from lorasoups.cli.main import main

    assert main(["report", str(run)]) == 0
    csv = (run / "results.csv").read_text().splitlines()
    assert csv[0].startswith("method,algorithm,t_target nll,t_target nll stderr,t_target nll n")
    assert len(csv) == 1 + 6
    # best per column: exactly the row(s) with min nll carry the mark
    doc = json.loads((run / "results.json").read_text())
    vals = {m: doc["results"][m]["t_target"]["metrics"]["nll"]["value"] for m in doc["results"]}
    best = min(vals, key=vals.get)
    row = next(r for r in csv[1:] if r.startswith(best + ","))
    assert "t_target nll" in row.split(",")[-1]
    assert (run / "results.png").stat().st_size > 1000
    assert rebuild_report(run)["md"].is_file()


def test_best_marking_rules():
    from lorasoups.report.tables import best_rows, markdown_table

    def doc(vals, better):
        return {"methods": {m: {"method": m} for m in vals},
                "results": {m: {"t": {"metrics": {"x": {"value": v, "stderr": 0.1, "n": 10}}}} for m, v in vals.items()},
                "columns": [{"label": "x", "task": "t", "metric": "x", "better": better}]}

    assert best_rows(doc({"a": 1.0, "b": 2.0}, "higher"), {"task": "t", "metric": "x", "better": "higher"}) == {"b"}
    assert best_rows(doc({"a": 1.0, "b": 2.0}, "lower"), {"task": "t", "metric": "x", "better": "lower"}) == {"a"}
    # all equal, or a control column: nothing marked
    assert best_rows(doc({"a": 0.0, "b": 0.0}, "higher"), {"task": "t", "metric": "x", "better": "higher"}) == set()
    d = doc({"a": 1.0, "b": 2.0}, "none")
    assert best_rows(d, d["columns"][0]) == set() and "**" not in markdown_table(d)


def test_identical_weights_evaluated_once(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path, methods={"base": {}, "a": {"method": "skill", "skill": "a"}, "b": {"method": "skill", "skill": "b"},
                                  "same1": {"method": "linear", "params": {"weights": [0.5, 0.5]}},
                                  "same2": {"method": "linear", "params": {"weights": [0.5, 0.5]}, "skills": ["a", "b"]}})
    fakes = Fakes(tiny_dir)
    fakes.build = lambda step, ctx: fakes._adapter(step.out, 7) or {}  # every build writes the same weights
    r, doc = _run(cfg, tmp_path / "run", fakes)
    evals = [c for c in fakes.calls if c.startswith("evaluate:")]
    assert "evaluate:same1:t_target,t_skill" in evals and not any(c.startswith("evaluate:same2") for c in evals)
    assert doc["results"]["same2"] == doc["results"]["same1"]


def test_run_folder_lock(tmp_path, tiny_dir):
    from filelock import FileLock

    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    held = FileLock(run / ".lock")
    with held:  # another run holds the folder
        with pytest.raises(LorasoupsError, match="in use by another"):
            _run(cfg, run, Fakes(tiny_dir))
    (run / ".lock").write_text("999999999")  # a file left behind is no lock
    _run(cfg, run, Fakes(tiny_dir))
    with FileLock(run / ".lock", timeout=0):  # released at the end of the run
        pass


def test_moe_follows_expert_bytes(tmp_path, tiny_dir):
    """PEFT writes target_modules from a set (order varies): merges ignore that, but an MoE folder
    checks its experts' files byte for byte, so it is rebuilt when they change at all."""
    cfg = _cfg(tmp_path, methods={"a": {"method": "skill", "skill": "a"}, "b": {"method": "skill", "skill": "b"},
                                  "ties": {"params": {"density": 0.5}}, "moe": {"params": {"max_steps": 1}}})
    fakes = Fakes(tiny_dir)
    _run(cfg, tmp_path / "run", fakes)
    conf = tmp_path / "run" / "skills" / "a" / "adapter_config.json"
    d = json.loads(conf.read_text())
    conf.write_text(json.dumps(dict(reversed(list(d.items())))))  # same content, other bytes
    r, _ = _run(cfg, tmp_path / "run", fakes)
    assert r.executed == ["build/moe"]


def test_report_compare_to(tmp_path, tiny_dir):
    rep = {"columns": [{"task": "t_target", "metric": "nll", "better": "lower"}], "compare_to": ["linear"]}
    cfg = _cfg(tmp_path, report=rep)
    run = tmp_path / "run"
    _, doc = _run(cfg, run, Fakes(tiny_dir))
    rows = {p["method"]: p for p in doc["analysis"]["paired"] if p["vs"] == "method:linear"}
    assert set(rows) == {"base", "a", "b", "ties", "cat"}
    # the paired difference is the mean of per-item differences of the two samples files
    from lorasoups.report.analysis import item_scores

    a = item_scores(run / doc["samples"]["cat"]["t_target"], "nll")
    b = item_scores(run / doc["samples"]["linear"]["t_target"], "nll")
    assert rows["cat"]["diff"] == pytest.approx(sum(a[k] - b[k] for k in a) / len(a))
    assert "**vs linear (report.compare_to)**" in (run / "results.md").read_text()
    with pytest.raises(LorasoupsError, match=r"report.compare_to: 'lineer' is not a method.*linear"):
        _cfg(tmp_path, report={"compare_to": ["lineer"]})


def test_results_record_peak_rss_per_stage(tmp_path, tiny_dir):
    cfg = _cfg(tmp_path)
    r, doc = _run(cfg, tmp_path / "run", Fakes(tiny_dir))
    mem = doc["memory"]
    # every executed stage has a peak, at least this (python + torch) process's own RSS
    assert set(mem["stage_peak_rss_mib"]) == {s.stage for s in r.steps}
    assert all(v > 50 for v in mem["stage_peak_rss_mib"].values())
    assert mem["run_peak_rss_mib"] == max(mem["stage_peak_rss_mib"].values())
    assert mem["process_peak_rss_mib"] >= mem["run_peak_rss_mib"] * 0.5 and "measures" in mem
    for tmg in doc["timing"]["steps"].values():
        assert tmg["peak_rss_mib"] > 0 and tmg["rss_after_mib"] > 0


def test_peak_rss_sampler_sees_an_allocation():
    import numpy as np

    from lorasoups.experiment.memory import PeakRSS, release_memory, rss_mib

    release_memory()
    before = rss_mib()
    with PeakRSS(interval_s=0.01) as m:
        a = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        import time
        time.sleep(0.1)
        del a
    assert m.peak_mib >= before + 50
    assert release_memory() in (True, False)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_from_seeds_a_study_run_with_the_finished_outputs(tmp_path, tiny_dir):
    """A study in a new folder (--from the finished run): only its new rows train and evaluate, the
    source folder is only read, a disabled task takes its columns with it, `like:` rows inherit."""
    fakes = Fakes(tiny_dir)
    src = tmp_path / "run"
    _run(_cfg(tmp_path), src, fakes)
    before = _tree(src)
    study = _cfg(tmp_path, methods={
        "base": {}, "a": {"method": "skill", "skill": "a"}, "b": {"method": "skill", "skill": "b"},
        "linear": {"params": {"weights": [0.5, 0.5]}}, "ties": {"params": {"density": 0.5}},
        "cat": {"params": {"max_steps": 2}},
        "cat_layer": {"like": "cat", "params": {"granularity": "layer"}},
        "cat_balanced": {"like": "cat_layer", "params": {"granularity": "module", "mix": "balanced"}},
    }, eval={"options": {"limit": 4}, "tasks": {"t_target": {"role": "target"},
                                                 "t_skill": {"role": "skill", "skill": "a", "enabled": False}}})
    assert study.method("cat_layer").method == "cat"
    assert dict(study.method("cat_layer").params) == {"max_steps": 2, "granularity": "layer"}
    assert dict(study.method("cat_balanced").params) == {"max_steps": 2, "granularity": "module", "mix": "balanced"}
    assert [c.task for c in study.columns] == ["t_target", "t_target"]  # t_skill's column went with the task
    fakes.calls.clear()
    r, doc = _run(study, tmp_path / "study", fakes, seed_from=src)
    assert sorted(r.executed) == ["build/cat_balanced", "build/cat_layer", "eval/cat_balanced", "eval/cat_layer"]
    assert [c for c in fakes.calls if c.startswith("evaluate:")] == ["evaluate:cat_layer:t_target",
                                                                     "evaluate:cat_balanced:t_target"]
    assert set(doc["results"]) == {m.label for m in study.methods}
    assert all(set(cells) == {"t_target"} for cells in doc["results"].values())
    # the finished rows' evaluations are the source run's, copied
    first = json.loads((src / "results.json").read_text())["results"]
    assert all(doc["results"][m]["t_target"] == first[m]["t_target"] for m in first)
    assert _tree(src) == before  # the source run was only read
    # seeding again changes nothing; a second study run does no work
    r2, _ = _run(study, tmp_path / "study", fakes, seed_from=src)
    assert r2.executed == []
    with pytest.raises(LorasoupsError, match="not a run folder"):
        Runner(study, tmp_path / "x", seed_from=tmp_path)
    with pytest.raises(LorasoupsError, match="the run folder itself"):
        Runner(study, src, seed_from=src)


def test_like_rows_report_bad_references(tmp_path):
    with pytest.raises(LorasoupsError) as e:
        _cfg(tmp_path, methods={"cat": {}, "x": {"like": "kat"}, "y": {"like": "z"}, "z": {"like": "y"}})
    msg = str(e.value)
    assert "methods.x.like: 'kat' is not a method label" in msg and "'cat'" in msg
    assert "methods.y.like: cycle" in msg


def test_paired_differences_vs_the_best_merge(tmp_path, tiny_dir):
    rep = {"columns": [{"task": "t_target", "metric": "nll", "better": "lower"}]}
    run = tmp_path / "run"
    _, doc = _run(_cfg(tmp_path, report=rep), run, Fakes(tiny_dir))
    rows = [p for p in doc["analysis"]["paired"] if p["vs"] == "best_merge"]
    nll = {m: doc["results"][m]["t_target"]["metrics"]["nll"]["value"] for m in ("linear", "ties")}
    best = min(nll, key=nll.get)  # the closed-form merges of this config; lower is better
    assert rows and {p["ref"] for p in rows} == {best}
    assert {p["method"] for p in rows} == {"base", "a", "b", "linear", "ties", "cat"} - {best}
    assert "**vs the best closed-form merge of each column" in (run / "results.md").read_text()
