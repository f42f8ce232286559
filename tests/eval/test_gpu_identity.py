"""Issue #16: --device/--precision plumbing (cpu here; the CUDA path is the same code with another
device string), base-model identity (canonical hub ids), eval picking the adapter's base, shape
mismatches naming both bases, model cards in every output folder, hub ids for --adapters."""
import dataclasses
import json

import pytest
import torch

from lorasoups.cli.main import main
from lorasoups.devices import eval_bf16, resolve_device
from lorasoups.errors import ConfigError
from lorasoups.models import EMBEDDED, canonical_base_id, embedded_path, resolve_base
from lorasoups.testing import make_peft_adapter

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_ID = "lorasoups-test/tiny-llama"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_hub(monkeypatch, tiny_dir):
    """The tiny model given a canonical hub id, as SmolLM2 has (same code path, no 135M model needed)."""
    monkeypatch.setitem(EMBEDDED, "tiny", dataclasses.replace(EMBEDDED["tiny"], hub_id=TINY_ID))
    return tiny_dir


@pytest.fixture
def skill_file(tmp_path):
    recs = [{"instruction": f"Name colour {i % 4}.", "input": "", "output": ["RED!", "BLUE!", "GREEN!", "GOLD!"][i % 4]}
            for i in range(16)]
    f = tmp_path / "colours.json"
    f.write_text(json.dumps(recs))
    return f


def _train(tmp_path, base, skill_file, name, *extra):
    out = tmp_path / name
    assert main(["train", "--base", str(base), "--data", str(skill_file), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--cutoff-len", "64", "--save-steps", "50", "--no-progress",
                 "--device", "cpu", "--precision", "fp32", *extra]) == 0
    return out


# ---- devices --------------------------------------------------------------------------------

def test_resolve_device_values():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert eval_bf16("auto") is None and eval_bf16("bf16") is True and eval_bf16("fp32") is False


def test_canonical_ids():
    assert EMBEDDED["smollm2-135m"].hub_id == SMOL
    assert canonical_base_id("smollm2-135m") == SMOL
    assert canonical_base_id(str(embedded_path("smollm2-135m"))) == SMOL
    assert canonical_base_id(SMOL.lower()) == SMOL
    assert canonical_base_id("tiny") == "tiny"
    assert canonical_base_id("org/other") == "org/other"
    from lorasoups.merge.driver import _same_base

    assert _same_base(SMOL, "smollm2-135m") and _same_base(SMOL, str(embedded_path("smollm2-135m")))
    assert not _same_base(SMOL, "org/other")


def test_canonical_id_resolves_to_embedded_copy(tiny_hub):
    assert resolve_base(TINY_ID) == str(embedded_path("tiny"))


# ---- train / merge / eval with the device as a parameter --------------------------------------

def test_train_merge_eval_on_cpu_with_canonical_ids(tiny_hub, skill_file, fake_data, tmp_path, capsys):
    trained = _train(tmp_path, tiny_hub, skill_file, "trained")
    cfg = json.loads((trained / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == TINY_ID          # not the cache path
    info = json.loads((trained / "train_info.json").read_text())
    assert info["precision"]["device"] == "cpu" and info["precision"]["resolved"] == "fp32"
    # an adapter made elsewhere for the same base (recorded by its hub id) merges without force
    other = make_peft_adapter(tiny_hub, tmp_path / "other", r=4, target_modules=("q_proj", "v_proj"), seed=3)
    oc = json.loads((other / "adapter_config.json").read_text())
    oc["base_model_name_or_path"] = TINY_ID
    (other / "adapter_config.json").write_text(json.dumps(oc))
    merged = tmp_path / "merged"
    assert main(["merge", "--method", "linear", "--adapters", str(trained), str(other), "--out", str(merged),
                 "--quiet"]) == 0
    assert json.loads((merged / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY_ID
    capsys.readouterr()
    # eval: no --base -> the adapter's recorded base (resolved to the embedded copy), said on stderr
    res = tmp_path / "res"
    assert main(["eval", "--adapter", str(merged), "--task", "qabot_dnd", "--limit", "2", "--no-generate",
                 "--out", str(res), "--data-dir", str(fake_data), "--device", "cpu", "--precision", "fp32",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"base model: {TINY_ID}" in err and "recorded by the adapter" in err
    doc = json.loads((res / "qabot_dnd" / "results.json").read_text())
    assert doc["model"]["base"] == TINY_ID and doc["model"]["device"] == "cpu"
    assert doc["model"]["bf16_autocast"] is False
    nll = doc["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"]
    # same numbers with the base given explicitly as the local folder
    from lorasoups.eval.runner import evaluate

    ref = evaluate(str(tiny_hub), str(merged), ["qabot_dnd"], None, data_dir=fake_data, generate=False, limit=2,
                   device="cpu", precision="fp32")
    assert ref["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"] == pytest.approx(nll, abs=1e-6)
    # model cards
    for folder, method in ((trained, "skill_lora"), (merged, "linear")):
        card = (folder / "README.md").read_text()
        assert f"base_model: {TINY_ID}" in card and f"**Method:** `{method}`" in card
    assert "colours.json" in (trained / "README.md").read_text()
    assert info["data"][0]["sha256"] in (trained / "README.md").read_text()
    assert "(weight 0.5)" in (merged / "README.md").read_text() or "(weight 1)" in (merged / "README.md").read_text()


def test_eval_bad_device_is_one_line(fake_data, tiny_dir, tmp_path, capsys):
    rc = main(["eval", "--base", str(tiny_dir), "--task", "qabot_dnd", "--limit", "2", "--no-generate",
               "--out", str(tmp_path / "r"), "--data-dir", str(fake_data), "--device", "tpu", "--quiet"])
    assert rc != 0 and "device" in capsys.readouterr().err


def test_run_cli_accepts_device_and_precision():
    from lorasoups.cli.main import build_parser  # noqa: F401 - the parser is what we check

    p = build_parser()
    a = p.parse_args(["run", "configs/math_code.yaml", "--device", "cpu", "--precision", "fp32"])
    assert a.device == "cpu" and a.precision == "fp32"
    a = p.parse_args(["train", "--data", "x", "--out", "o", "--device", "cuda:1"])
    assert a.device == "cuda:1"
    a = p.parse_args(["eval", "--task", "x", "--out", "o", "--device", "cpu", "--precision", "bf16", "--backend", "auto"])
    assert a.device == "cpu" and a.precision == "bf16" and a.base is None


def test_paper_presets_use_auto_backend():
    from lorasoups.config import load_config

    for name in ("math_code", "bio_qa", "prompt_formats", "qabot_dnd"):
        cfg = load_config(f"configs/{name}.yaml", preset="paper")
        assert cfg.tasks and all(t.options.get("backend") == "auto" for t in cfg.tasks)


def test_pick_backend():
    from lorasoups.eval.model import pick_backend

    assert pick_backend("auto", "cpu") == "hf"
    assert pick_backend("hf", "cuda") == "hf"
    import importlib.util

    assert pick_backend("auto", "cuda") == ("vllm" if importlib.util.find_spec("vllm") else "hf")


# ---- mismatch names both bases ------------------------------------------------------------------

def test_shape_mismatch_names_both_bases(tiny_dir, fake_data, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(tiny_dir))
    cfg.intermediate_size = 96
    other = tmp_path / "narrow-llama"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(other))
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(str(other))
    ad = make_peft_adapter(tiny_dir, tmp_path / "ad", r=4, target_modules=("gate_proj", "up_proj"), seed=1)
    rc = main(["eval", "--base", str(other), "--adapter", str(ad), "--task", "qabot_dnd", "--limit", "2",
               "--no-generate", "--out", str(tmp_path / "r"), "--data-dir", str(fake_data), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert str(other) in err and "tiny" in err and "different base models" in err
    assert "size mismatch" in err or "shape" in err
    print(err)
    assert "Traceback" not in err


# ---- hub ids for --adapters -----------------------------------------------------------------------

def test_hub_adapter_offline_message(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = make_peft_adapter(tiny_dir, tmp_path / "a", r=4, seed=1)
    rc = main(["merge", "--method", "linear", "--adapters", str(a), "someorg/some-lora", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc != 0 and "someorg/some-lora" in err and "HF_HUB_OFFLINE=1" in err
    assert "Traceback" not in err and not (tmp_path / "m").exists()


# ---- a model card in every output folder ------------------------------------------------------------

def test_every_output_folder_has_a_model_card(tiny_dir, skill_file, tmp_path):
    pytest.importorskip("nevergrad")
    a = make_peft_adapter(tiny_dir, tmp_path / "a", r=4, seed=1)
    b = make_peft_adapter(tiny_dir, tmp_path / "b", r=4, seed=2)
    common = ["--base", str(tiny_dir), "--adapters", str(a), str(b), "--data", str(skill_file)]
    outs = {
        "cat": ["cat", *common, "--out", str(tmp_path / "cat"), "--max-steps", "2", "--batch-size", "4",
                "--fraction", "1", "--device", "cpu", "--precision", "fp32", "--quiet"],
        "moe": ["moe", *common, "--out", str(tmp_path / "moe"), "--max-steps", "2", "--batch-size", "4",
                "--fraction", "1", "--device", "cpu", "--quiet"],
        "lorahub": ["lorahub", *common, "--out", str(tmp_path / "lorahub"), "--budget", "3", "--examples", "3",
                    "--device", "cpu", "--quiet"],
        "data_mix": ["train", "--base", str(tiny_dir), "--data", str(skill_file), "--data", str(skill_file),
                     "--out", str(tmp_path / "data_mix"), "--max-steps", "1", "--batch-size", "4",
                     "--cutoff-len", "64", "--no-progress", "--device", "cpu"],
        "ties": ["merge", "--method", "ties", "--adapters", str(a), str(b), "--rank", "4",
                 "--out", str(tmp_path / "ties"), "--quiet"],
    }
    for method, argv in outs.items():
        assert main(argv) == 0, method
        card = (tmp_path / method / "README.md").read_text()
        assert card.startswith("---\n") and f"**Method:** `{method}`" in card, method
        assert "**Base model:** `tiny`" in card, method
        if method in ("cat", "moe", "lorahub", "data_mix"):
            assert "## Training data" in card and "colours.json" in card, method
        if method != "data_mix":
            assert "## Inputs" in card, method
    # every output records its provenance the same way (lorasoups.provenance.provenance)
    info = {"cat": "cat_options.json", "moe": "moe_config.json", "lorahub": "lorahub_weights.json",
            "data_mix": "train_info.json", "ties": "merge_info.json"}
    for method, name in info.items():
        prov = json.loads((tmp_path / method / name).read_text())["provenance"]
        assert set(prov) == {"git_commit", "package_versions", "created"}, method
        assert prov["package_versions"]["torch"] and prov["package_versions"]["lorasoups"], method
    assert "## CAT coefficients" in (tmp_path / "cat" / "README.md").read_text()
    assert "(weight " in (tmp_path / "lorahub" / "README.md").read_text()
    # the card does not disturb loading with PEFT
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "cat")).r >= 4
