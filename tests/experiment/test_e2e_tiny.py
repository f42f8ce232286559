"""`lorasoups run` end to end on the tiny model with the real pieces: train -> merges -> CAT ->
LoRA Hub -> MoE -> DATA-MIX -> evaluation -> results; re-runs and deletions hit the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorasoups.cli.main import main
from lorasoups.config import load_config
from lorasoups.experiment import Runner

CONFIG = """
name: tiny_e2e
base: tiny
seed: 0
train: {{r: 2, lora_alpha: 4, max_steps: 2, batch_size: 4, cutoff_len: 96, save_steps: 1000, warmup_steps: 0}}
skills:
  a: {{data: ["{a}"]}}
  b: {{data: ["{b}"]}}
methods:
  base: {{}}
  a: {{method: skill, skill: a}}
  b: {{method: skill, skill: b}}
  data_mix: {{params: {{max_steps: 2}}}}
  linear: {{params: {{weights: [0.5, 0.5]}}}}
  ties: {{params: {{density: 0.5}}}}
  lorahub: {{params: {{budget: 3, examples: 2, cutoff_len: 96}}}}
  moe: {{params: {{max_steps: 2, batch_size: 2, fraction: 0.5, cutoff_len: 96}}}}
  cat: {{params: {{max_steps: 2, batch_size: 2, fraction: 0.5, cutoff_len: 96}}}}
  cat_uniform: {{method: cat, params: {{no_train: true, cutoff_len: 96}}}}
eval:
  options: {{batch_size: 4, limit: 2, max_new_tokens: 4, bf16: false}}
  tasks:
    qabot_dnd: {{role: target}}
    gsm8k_words: {{role: skill, skill: a}}
report:
  columns:
    - {{task: qabot_dnd, metric: nll_gold}}
    - {{task: qabot_dnd, metric: rouge_l}}
    - {{task: gsm8k_words, metric: nll_gold}}
presets:
  test: {{seed: 0}}
"""


def _records(path: Path, tag: str) -> Path:
    path.write_text(json.dumps([{"instruction": f"{tag} q{i}", "input": "", "output": f"{tag} a{i}"} for i in range(8)]))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("e2e")
    cfg_path = d / "tiny.yaml"
    cfg_path.write_text(CONFIG.format(a=_records(d / "a.json", "alpha"), b=_records(d / "b.json", "beta")))
    run = d / "run"
    rc = main(["run", str(cfg_path), "--preset", "test", "--out", str(run)])
    assert rc == 0
    return cfg_path, run


def test_results_and_report(finished_run, capsys):
    _, run = finished_run
    doc = json.loads((run / "results.json").read_text())
    labels = ["base", "a", "b", "data_mix", "linear", "ties", "lorahub", "moe", "cat", "cat_uniform"]
    assert list(doc["results"]) == labels
    for m in labels:
        cell = doc["results"][m]["qabot_dnd"]["metrics"]
        assert cell["nll_gold"]["n"] == 2 and cell["rouge_l"]["n"] == 2
    # different models give different likelihoods (the adapters do something)
    nll = {m: doc["results"][m]["gsm8k_words"]["metrics"]["nll_gold"]["value"] for m in labels}
    assert len({round(v, 6) for v in nll.values()}) > 3
    prov = doc["provenance"]
    assert prov["package_versions"]["peft"] != "absent" and prov["base_model"]["files"]
    assert "adapter_model.safetensors" in doc["methods"]["cat"]["checksums"]
    assert (run / "methods" / "moe" / "moe_config.json").is_file()
    md = (run / "results.md").read_text()
    assert md.count("\n| ") >= len(labels) + 1 and "Super-linearity" in md
    assert (run / "results.png").stat().st_size > 1000
    steps = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines()]
    assert sum(1 for s in steps if s.get("event") == "done") == 2 + 7 + len(labels)
    # cat_uniform (CAT untrained, 1/n) and linear (0.5, 0.5) are the same LoRA: evaluated once
    assert json.loads((run / "steps" / "eval" / "cat_uniform" / "qabot_dnd.json").read_text()).get("copied_from")


def test_rerun_does_no_training_and_delete_redoes_one(finished_run, monkeypatch, capsys):
    cfg_path, run = finished_run
    import lorasoups.train.sft as sft

    calls = []
    real = sft.train_lora
    monkeypatch.setattr(sft, "train_lora", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = load_config(cfg_path, preset="test")
    r = Runner(cfg, run, log=lambda s: None)
    r.run()
    assert r.executed == [] and calls == []
    shutil.rmtree(run / "methods" / "ties")
    r = Runner(cfg, run, log=lambda s: None)
    r.run()
    assert r.executed == ["build/ties"] and calls == []
    assert (run / "methods" / "ties" / "adapter_model.safetensors").is_file()
    shutil.rmtree(run / "eval" / "lorahub")
    assert main(["run", str(cfg_path), "--preset", "test", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "steps run this time: 1 of 19" in out and "step 16/19: evaluate 'lorahub'" in out
