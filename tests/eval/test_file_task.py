"""Your own target data as a task: a JSONL/CSV/Parquet file via ``--task PATH`` and in experiment
configs; field mapping, numeric mode, primary metrics; tasks from a ``lorasoups.tasks`` entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lorasoups.cli.main import main
from lorasoups.errors import ConfigError, DataError
from lorasoups.eval import registry
from lorasoups.eval.registry import TASKS, MetricInfo, get_task, register_file_task

RECORDS = [
    {"prompt": "What is 2 + 3?", "answer": "5"},
    {"instruction": "Name the colour of a clear sky.", "input": "Daytime.", "answers": ["blue", "light blue"]},
    {"prompt": "Capital of France?", "output": "Paris"},
    {"prompt": "Opposite of up?", "completion": "down"},
]


def _write_jsonl(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(autouse=True)
def _forget_file_tasks():
    registry.load_tasks()
    before = set(TASKS.names())
    yield
    for n in set(TASKS.names()) - before:
        del TASKS._items[n]


def test_fields_golds_and_scores(tmp_path):
    t = get_task(str(_write_jsonl(tmp_path / "mine.jsonl", RECORDS)))
    assert t.name == "mine" and t.kind == "custom" and t.primary() == ("f1",)
    items = t.load_items()
    assert [it.gold for it in items] == [["5"], ["blue", "light blue"], ["Paris"], ["down"]]
    assert items[1].input == "Daytime." and items[1].gold_text == "blue"
    s = t.score(items[1], "The answer is Light blue.")["scores"]
    assert s["exact_match"] == 1.0 and s["f1"] == 1.0 and s["rouge_l"] == 1.0  # best over the golds
    s = t.score(items[2], "Lyon")["scores"]
    assert s == {"exact_match": 0.0, "f1": 0.0, "rouge_l": 0.0}
    assert t.info("nll_gold").better == "lower" and t.info("f1") == MetricInfo("primary", "higher")
    assert t.info("nll_control") == MetricInfo("control", "none")
    assert {"nll_gold", "nll_control", "nll_gap"} <= set(t.metrics)


def test_field_map_numeric_mode_and_csv(tmp_path):
    p = tmp_path / "nums.csv"
    p.write_text("question,label\nHow many legs has a cat?,4\n\"Half of 3, please\",1.5\n")
    t = get_task(f"{p}:prompt=question,answers=label,mode=numeric")
    assert t.primary() == ("accuracy",) and t.metrics[0] == "accuracy"
    items = t.load_items()
    assert [it.instruction for it in items] == ["How many legs has a cat?", "Half of 3, please"]
    assert t.score(items[0], "A cat has 4 legs.")["scores"]["accuracy"] == 1.0
    assert t.score(items[1], "It is 1.50")["scores"]["accuracy"] == 1.0
    assert t.score(items[1], "#### 2")["scores"]["accuracy"] == 0.0
    assert t.score(items[0], "no idea")["status"] == "no number"


def test_parquet_task(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    p = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "x?", "golds": ["a", "b"]}, {"q": "y?", "golds": ["c"]}]), p)
    items = get_task(f"{p}:prompt=q,answers=golds").load_items()
    assert [it.gold for it in items] == [["a", "b"], ["c"]]


def test_bad_files_and_specs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        get_task(str(tmp_path / "missing.jsonl"))
    p = _write_jsonl(tmp_path / "nogold.jsonl", [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"nogold.jsonl: record 1: no gold answer"):
        get_task(str(p)).load_items()
    # a bad record beyond --limit is still found, numbered from 1 like the lines of the file
    p = _write_jsonl(tmp_path / "late.jsonl", [{"prompt": "q", "answer": "a"}] * 3 + [{"prompt": "q"}])
    with pytest.raises(DataError, match=r"late.jsonl: record 4: no gold answer"):
        get_task(str(p)).load_items(limit=3)
    p = _write_jsonl(tmp_path / "mapped.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(DataError, match="mapped field prompt=question"):
        get_task(f"{p}:prompt=question,answer=a").load_items()
    with pytest.raises(ConfigError, match="unknown option"):
        get_task(f"{p}:promt=q")
    # a built-in task's name is not taken over by a file
    g = _write_jsonl(tmp_path / "gsm_hard.jsonl", RECORDS)
    with pytest.raises(ConfigError, match="name=OTHER"):
        register_file_task(str(g))
    assert register_file_task(f"{g}:name=my_gsm").name == "my_gsm"


def test_cli_task_path_end_to_end(tmp_path, tiny_dir, capsys):
    data = _write_jsonl(tmp_path / "target.jsonl", RECORDS)
    out = tmp_path / "ev"
    rc = main(["eval", "--base", str(tiny_dir), "--task", f"{data}:mode=text", "--max-new-tokens", "3",
               "--out", str(out), "--fp32", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "target" / "results.json").read_text())
    t = doc["tasks"]["target"]
    assert t["n_items"] == 4 and t["kind"] == "custom"
    assert {"exact_match", "f1", "rouge_l", "nll_gold", "nll_control", "nll_gap"} <= set(t["metrics"])
    assert t["metrics"]["nll_gap"]["n"] == 4 and t["metrics"]["nll_gold"]["value"] > 0
    assert t["primary_metrics"] == ["f1"] and t["metric_roles"]["nll_gold"] == {"role": "score", "better": "lower"}
    assert t["metric_roles"]["nll_control"] == {"role": "control", "better": "none"}
    recs = [json.loads(x) for x in (out / "target" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["nll"]["control_id"] for r in recs)


def test_experiment_config_with_task_file(tmp_path, tiny_dir):
    _write_jsonl(tmp_path / "my_target.jsonl", RECORDS)
    skill = _write_jsonl(tmp_path / "skill.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)])
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""
name: own_target
base: {tiny_dir}
seed: 0
train: {{r: 2, lora_alpha: 4, max_steps: 1, batch_size: 2, cutoff_len: 64, save_steps: 1000, warmup_steps: 0}}
skills:
  a: {{data: ["{skill}"]}}
methods:
  base: {{}}
eval:
  options: {{batch_size: 4, max_new_tokens: 3, bf16: false}}
  tasks:
    target: {{task: my_target.jsonl, role: target}}
report:
  columns:
    - {{task: target, metric: f1}}
""")
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(run)]) == 0
    doc = json.loads((run / "results.json").read_text())
    cell = doc["results"]["base"]["target"]["metrics"]
    assert cell["f1"]["n"] == 4 and cell["nll_gap"]["n"] == 4


def test_config_unknown_metric_and_missing_file(tmp_path, tiny_dir):
    from lorasoups.config import load_config

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""
name: x
base: {tiny_dir}
skills: {{a: {{data: [gsm8k]}}}}
methods: {{base: {{}}}}
eval:
  tasks:
    target: {{task: nope.jsonl}}
""")
    with pytest.raises(ConfigError, match="nope.jsonl not found"):
        load_config(cfg)


ENTRY_MODULE = '''
from lorasoups.eval.registry import Item, Task


class EchoTask(Task):
    name = "echo_plugin"
    kind = "custom"
    description = "plugin test task"
    score_metrics = ("hit",)
    likelihood_note = "no gold response"

    def load_items(self, data_dir=None, limit=None):
        return [Item(f"echo_plugin-{i}", f"say {w}", None, w) for i, w in enumerate(["yes", "no"])][:limit]

    def score(self, item, completion, exec_result=None, extracted=None):
        return {"extracted": completion, "status": "answered",
                "scores": {"hit": float(item.gold in completion)}}
'''


def test_entry_point_task(tmp_path, monkeypatch):
    """A distribution on sys.path declaring ``[lorasoups.tasks] echo = fake_tasks:EchoTask``."""
    (tmp_path / "fake_tasks.py").write_text(ENTRY_MODULE)
    dist = tmp_path / "fake_lorasoups_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lorasoups-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lorasoups.tasks]\necho = fake_tasks:EchoTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_tasks", raising=False)
    assert registry.load_entry_point_tasks() == ["echo_plugin"]
    t = get_task("echo_plugin")
    assert t.primary() == ("hit",) and t.metrics == ("hit",)
    assert registry.load_entry_point_tasks() == []  # loading again is harmless

    from lorasoups.eval.generate import CannedGenerator
    from lorasoups.eval.runner import evaluate

    res = evaluate("tiny", tasks=["echo_plugin"], generator=CannedGenerator(["yes", "maybe"]),
                   tokenizer=_tok())
    assert res["tasks"]["echo_plugin"]["metrics"]["hit"]["value"] == 0.5


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lorasoups.tasks]\nbad = no_such_module_xyz:Task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"entry point bad = no_such_module_xyz:Task .*broken-plugin.*cannot load"):
        registry.load_entry_point_tasks()


def _tok():
    from lorasoups.models import load_tokenizer

    return load_tokenizer("tiny")
