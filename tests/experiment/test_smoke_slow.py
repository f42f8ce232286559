"""The shipped configs end to end with their `smoke` preset on SmolLM2-135M (slow: minutes each).

CI runs the math_code one; the others are here to keep every shipped config runnable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorasoups.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _run_smoke(name: str, smollm2_dir: Path, out: Path) -> dict:
    # base=<prepared folder>: the tests' temporary LORASOUPS_HOME must not rebuild the model
    rc = main(["run", str(REPO / "configs" / f"{name}.yaml"), f"base={smollm2_dir}", "--preset", "smoke",
               "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    for f in ("results.md", "results.csv", "results.png", "steps.jsonl"):
        assert (out / f).is_file()
    cols = doc["columns"]
    assert cols
    for m in doc["methods"]:
        for c in cols:
            cell = doc["results"][m][c["task"]]["metrics"].get(c["metric"])
            assert cell is not None and cell["n"] >= 1, (m, c)
    return doc


@pytest.mark.slow
def test_math_code_smoke(smollm2_dir, tmp_path):
    doc = _run_smoke("math_code", smollm2_dir, tmp_path / "run")
    assert {"base", "math", "code", "data_mix", "linear", "ties", "dare_ties", "dare_linear", "knots", "core_space",
            "lorahub", "moe", "cat", "cat_uniform", "cat_sum", "cat_random", "lora_cat_data"} == set(doc["methods"])
    # programs were generated and executed in the sandbox
    assert doc["results"]["code"]["gsm_hard"]["metrics"]["exec_acc"]["n"] == 4
    # CAT's fresh-LoRA control trained on exactly CAT's examples (digest of the token ids)
    methods = tmp_path / "run" / "methods"
    control = json.loads((methods / "lora_cat_data" / "train_info.json").read_text())["control"]
    cat = json.loads((methods / "cat" / "cat_options.json").read_text())["resolved"]
    assert control["train_examples_sha256"] == cat["train_examples_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qabot_dnd", "bio_qa", "prompt_formats"])
def test_other_configs_smoke(name, smollm2_dir, tmp_path):
    _run_smoke(name, smollm2_dir, tmp_path / "run")
