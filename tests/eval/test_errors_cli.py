"""Clear errors, the CLI, and adapter loading."""

import json

import pytest

from lorasoups.cli.main import main
from lorasoups.errors import AdapterError, ConfigError, DataError
from lorasoups.eval.generate import CannedGenerator
from lorasoups.eval.runner import evaluate, resolve_options
from lorasoups.registry import UnknownNameError


def test_missing_data_file_names_task_and_file(tmp_path, tiny_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        evaluate(str(tiny_dir), None, ["multiarith_words"], None, data_dir=empty, generator=CannedGenerator(["1"]))
    msg = str(e.value)
    assert "multiarith_words" in msg and "multiarith/test.json" in msg and "not found" in msg


def test_unknown_task_did_you_mean(tiny_dir):
    with pytest.raises(UnknownNameError) as e:
        evaluate(str(tiny_dir), None, ["multiarth"], None)
    assert "did you mean 'multiarith'" in str(e.value)


def test_corrupt_samples_file(fake_data, tmp_path, tiny_dir):
    run = tmp_path / "prev"
    (run / "multiarith_words").mkdir(parents=True)
    (run / "multiarith_words" / "samples.jsonl").write_text('{"id": "multiarith_words-0", "completion": "1"}\n{"id": "mul')
    with pytest.raises(DataError) as e:
        evaluate(str(tiny_dir), None, ["multiarith_words"], None, data_dir=fake_data, rescore=run)
    assert "line 2 is not valid JSON" in str(e.value) and "multiarith_words/samples.jsonl" in str(e.value)
    (run / "multiarith_words" / "samples.jsonl").write_text('{"id": "multiarith_words-0"}\n')
    with pytest.raises(DataError, match="lacks field"):
        evaluate(str(tiny_dir), None, ["multiarith_words"], None, data_dir=fake_data, rescore=run)


def test_code_tasks_refuse_without_permission(fake_data, tiny_dir):
    with pytest.raises(ConfigError) as e:
        evaluate(str(tiny_dir), None, ["multiarith", "qabot_dnd"], None, data_dir=fake_data,
                 generator=CannedGenerator(["x"]), likelihood=False)
    assert "--allow-code-execution" in str(e.value) and "multiarith" in str(e.value)
    # likelihood-only evaluation executes nothing and needs no permission
    res = evaluate(str(tiny_dir), None, ["gsm_hard"], None, data_dir=fake_data, generate=False, limit=1, bf16=False)
    assert "nll_gold" in res["tasks"]["gsm_hard"]["metrics"]


def test_options_are_validated():
    with pytest.raises(ConfigError) as e:
        resolve_options({"limt": 3, "batch_size": 0})
    assert "limt: unknown option (did you mean 'limit'" in str(e.value) and "batch_size" in str(e.value)
    assert resolve_options({"limit": 3})["limit"] == 3


def test_cli_eval_runs_and_writes(fake_data, tmp_path, tiny_dir, capsys):
    out = tmp_path / "cli"
    rc = main(["eval", "--base", str(tiny_dir), "--task", "qabot_dnd", "--limit", "2", "--max-new-tokens", "3",
               "--out", str(out), "--data-dir", str(fake_data), "--fp32", "--quiet"])
    assert rc == 0
    index = json.loads((out / "results.json").read_text())
    assert index["tasks"] == {"qabot_dnd": "qabot_dnd/results.json"} and "provenance" in index
    doc = json.loads((out / "qabot_dnd" / "results.json").read_text())
    t = doc["tasks"]["qabot_dnd"]
    assert t["n_items"] == 2 and {"f1", "rouge_l", "exact_match", "nll_gold", "nll_gap"} <= set(t["metrics"])
    assert all(set(v) >= {"value", "stderr", "n"} for v in t["metrics"].values())
    assert doc["checksums"]["base"]["config.json"] and doc["options"]["limit"] == 2
    lines = (out / "qabot_dnd" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and isinstance(json.loads(lines[0])["completion"], str)
    assert "qabot_dnd" in capsys.readouterr().out
    # the output exists: refused without --overwrite (exit code 2, clear message)
    rc = main(["eval", "--base", str(tiny_dir), "--task", "qabot_dnd", "--out", str(out), "--data-dir", str(fake_data)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_cli_errors_exit_2(fake_data, tmp_path, tiny_dir, capsys):
    assert main(["eval", "--base", str(tiny_dir), "--task", "multiarth", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'multiarith'" in capsys.readouterr().err
    assert main(["eval", "--base", str(tiny_dir), "--task", "multiarith", "--out", str(tmp_path / "y"),
                 "--data-dir", str(fake_data)]) == 2
    assert "--allow-code-execution" in capsys.readouterr().err
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "gsm_hard" in out and "prompt_formats" in out and "math_code" in out


def test_adapter_folder_loaded_with_peft(fake_data, tmp_path, tiny_dir):
    from lorasoups.testing import make_peft_adapter

    ad = make_peft_adapter(tiny_dir, tmp_path / "ad", r=4, lora_alpha=8, std=0.3)
    kw = dict(data_dir=fake_data, generate=False, limit=2, bf16=False)
    base = evaluate(str(tiny_dir), None, ["qabot_dnd"], None, **kw)
    with_ad = evaluate(str(tiny_dir), ad, ["qabot_dnd"], tmp_path / "o", **kw)
    unmerged = evaluate(str(tiny_dir), ad, ["qabot_dnd"], None, merge_lora=False, **kw)
    g0 = base["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"]
    g1 = with_ad["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"]
    g2 = unmerged["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"]
    assert abs(g1 - g0) > 1e-4 and g1 == pytest.approx(g2, abs=1e-4)
    assert with_ad["model"]["adapter_kind"] == "lora" and "adapter_config.json" in with_ad["checksums"]["adapter"]
    with pytest.raises(AdapterError, match="does not exist"):
        evaluate(str(tiny_dir), tmp_path / "nope", ["qabot_dnd"], None, **kw)


def test_vllm_backend_is_an_optional_extra(fake_data, tiny_dir):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="optional vLLM extra"):
        evaluate(str(tiny_dir), None, ["qabot_dnd"], None, data_dir=fake_data, backend="vllm", limit=1)
