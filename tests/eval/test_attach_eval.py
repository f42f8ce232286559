"""Eval, inspect, CAT and merge never use an adapter whose tensors did not attach (issue #13, item 6)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorasoups.cli.main import main
from lorasoups.errors import AdapterError
from lorasoups.eval.runner import evaluate
from lorasoups.io.adapters import read_adapter
from lorasoups.testing import make_peft_adapter, peft_logits

P = "base_model.model."


def _rekey(src, dst, fn):
    shutil.copytree(src, dst)
    t = load_file(str(src / "adapter_model.safetensors"))
    save_file({fn(k): v for k, v in t.items()}, str(dst / "adapter_model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def good(tiny_dir, tmp_path_factory):
    return make_peft_adapter(tiny_dir, tmp_path_factory.mktemp("ev") / "good", r=4, lora_alpha=8, std=0.3, seed=2)


def _nll(res):
    return res["tasks"]["qabot_dnd"]["metrics"]["nll_gold"]["value"]


@pytest.mark.parametrize("variant", ["no_peft_prefix", "doubled_peft_prefix", "no_inner_prefix"])
def test_eval_nll_of_prefix_variant_equals_correct_adapter(fake_data, tiny_dir, good, tmp_path, variant):
    fn = {"no_peft_prefix": lambda k: k[len(P):], "doubled_peft_prefix": lambda k: P + k,
          "no_inner_prefix": lambda k: P + k[len(P + "model."):]}[variant]
    bad = _rekey(good, tmp_path / variant, fn)
    kw = dict(data_dir=fake_data, generate=False, limit=2, bf16=False)
    base = _nll(evaluate(str(tiny_dir), None, ["qabot_dnd"], None, **kw))
    ref = _nll(evaluate(str(tiny_dir), good, ["qabot_dnd"], None, **kw))
    got = evaluate(str(tiny_dir), bad, ["qabot_dnd"], None, **kw)
    assert abs(ref - base) > 1e-4
    assert _nll(got) == pytest.approx(ref, abs=1e-6)
    assert got["model"]["remapped_modules"] > 0


def test_cli_eval_refuses_unattached_adapter(fake_data, tiny_dir, good, tmp_path, capsys):
    bad = _rekey(good, tmp_path / "garbage", lambda k: k.replace(P + "model.", P + "decoder."))
    out = tmp_path / "res"
    rc = main(["eval", "--base", str(tiny_dir), "--adapter", str(bad), "--task", "qabot_dnd", "--limit", "2",
               "--max-new-tokens", "2", "--out", str(out), "--data-dir", str(fake_data), "--fp32", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "base_model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight" in err
    assert not (out / "results.json").exists()


def test_inspect_reports_unattached_and_mapped_keys(tiny_dir, good, tmp_path, capsys):
    assert main(["inspect", str(good)]) == 0
    assert "[ok] tensors attach to base model" in capsys.readouterr().out
    bad = _rekey(good, tmp_path / "garbage", lambda k: k.replace(P + "model.", P + "decoder."))
    assert main(["inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL]" in out and "decoder.layers.0.self_attn.q_proj.lora_A.weight" in out
    assert "[FAIL] tensors attach to base model" in out and "[ok] tensors attach" not in out
    mapped = _rekey(good, tmp_path / "mapped", lambda k: k[len(P):])
    assert main(["inspect", str(mapped), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "not PEFT's own spelling" in info["checks"]["tensors attach to base model"]
    # a base model given explicitly; without one, decoder-rooted paths are still caught
    rootless = _rekey(good, tmp_path / "rootless", lambda k: k[len(P + "model."):])
    cfg = json.loads((rootless / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "org/not-here"
    (rootless / "adapter_config.json").write_text(json.dumps(cfg))
    assert main(["inspect", str(rootless)]) == 1
    assert "lack the model's prefix" in capsys.readouterr().out
    assert main(["inspect", str(rootless), "--base", str(tiny_dir)]) == 0


def test_cat_and_merge_map_variants_to_the_same_result(tiny_dir, good, tmp_path, input_ids):
    from lorasoups.merge.driver import merge_adapters
    from lorasoups.train.cat import train_cat

    other = make_peft_adapter(tiny_dir, tmp_path / "other", r=2, lora_alpha=4, std=0.3, seed=9,
                              target_modules=("q_proj", "up_proj"))
    bad = _rekey(other, tmp_path / "other_v", lambda k: k[len(P + "model."):])   # layers.0...
    ref = merge_adapters([good, other], "concat", tmp_path / "m_ref")
    got = merge_adapters([good, bad], "concat", tmp_path / "m_got", base=str(tiny_dir))
    r, g = read_adapter(ref), read_adapter(got)
    assert set(r.modules) == set(g.modules)
    assert all(torch.equal(r.modules[m].delta(), g.modules[m].delta()) for m in r.modules)
    assert "mapped" in json.loads((got / "merge_info.json").read_text())["module_name_check"]
    c_ref = train_cat(str(tiny_dir), [good, other], None, tmp_path / "c_ref", no_train=True, precision="fp32", device="cpu")
    c_got = train_cat(str(tiny_dir), [good, bad], None, tmp_path / "c_got", no_train=True, precision="fp32", device="cpu")
    assert torch.equal(peft_logits(tiny_dir, c_ref, input_ids), peft_logits(tiny_dir, c_got, input_ids))
    garbage = _rekey(other, tmp_path / "garbage", lambda k: k.replace("mlp", "ffn"))
    with pytest.raises(AdapterError, match=r"ffn\.up_proj\.lora_A\.weight"):
        merge_adapters([good, garbage], "concat", tmp_path / "m_bad")
    with pytest.raises(AdapterError, match=r"ffn\.up_proj\.lora_A\.weight"):
        train_cat(str(tiny_dir), [good, garbage], None, tmp_path / "c_bad", no_train=True, precision="fp32", device="cpu")
