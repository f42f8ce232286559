"""Adapters whose tensor names miss, double or lack a prefix: mapped when the variant is known
(same logits as the correctly keyed file), refused naming the keys otherwise (issue #13, item 6)."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorasoups.errors import AdapterError
from lorasoups.io.adapters import read_adapter
from lorasoups.io.attach import align_to_model, load_peft_adapter
from lorasoups.testing import make_peft_adapter, peft_logits

P = "base_model.model."


def _rekey(src, dst, fn):
    shutil.copytree(src, dst)
    t = load_file(str(src / "adapter_model.safetensors"))
    save_file({fn(k): v for k, v in t.items()}, str(dst / "adapter_model.safetensors"))
    return dst


VARIANTS = {
    "no_peft_prefix": lambda k: k[len(P):],                                   # model.layers.0...
    "doubled_peft_prefix": lambda k: P + k,                                   # base_model.model.base_model.model.model...
    "no_inner_prefix": lambda k: P + k[len(P + "model."):],                   # base_model.model.layers.0...
    "no_prefix_at_all": lambda k: k[len(P + "model."):],                      # layers.0...
    "doubled_inner_prefix": lambda k: P + "model." + k[len(P):],              # base_model.model.model.model.layers...
    "adapter_name": lambda k: k.replace(".weight", ".default.weight"),        # ...lora_A.default.weight
    "no_peft_prefix_adapter_name": lambda k: k[len(P):].replace(".weight", ".default.weight"),
}


@pytest.fixture(scope="module")
def good(tiny_dir, tmp_path_factory):
    return make_peft_adapter(tiny_dir, tmp_path_factory.mktemp("a") / "good", r=4, lora_alpha=8,
                             target_modules=("q_proj", "v_proj", "down_proj"), seed=5, std=0.1)


def _logits(tiny_dir, adapter, input_ids):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    pm, _rec, remapped = load_peft_adapter(base, adapter)
    with torch.no_grad():
        return pm(input_ids=input_ids).logits, remapped


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_prefix_variants_give_the_correct_logits(tiny_dir, good, tmp_path, input_ids, variant):
    bad = _rekey(good, tmp_path / variant, VARIANTS[variant])
    ref = peft_logits(tiny_dir, good, input_ids)
    base = peft_logits(tiny_dir, None, input_ids)
    assert (ref - base).abs().max() > 1e-2                      # the adapter does something
    got, remapped = _logits(tiny_dir, bad, input_ids)
    assert remapped > 0
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    # the bug: vanilla PEFT silently evaluates (close to) the base model for most variants
    if variant in ("no_peft_prefix", "doubled_peft_prefix", "no_inner_prefix", "no_prefix_at_all"):
        assert (peft_logits(tiny_dir, bad, input_ids) - ref).abs().max() > 1e-3


def test_canonical_file_uses_vanilla_peft(tiny_dir, good, input_ids):
    got, remapped = _logits(tiny_dir, good, input_ids)
    assert remapped == 0
    assert torch.allclose(got, peft_logits(tiny_dir, good, input_ids), atol=1e-6, rtol=0)


def test_garbage_keys_are_refused_with_their_names(tiny_dir, good, tmp_path):
    bad = _rekey(good, tmp_path / "bad", lambda k: k.replace("self_attn", "attention") if "q_proj" in k else k)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with pytest.raises(AdapterError) as e:
        load_peft_adapter(base, bad)
    msg = str(e.value)
    assert "base_model.model.model.layers.0.attention.q_proj.lora_A.weight" in msg
    assert str(bad) in msg


def test_same_tensors_under_two_spellings_are_refused(tiny_dir, good, tmp_path):
    dst = shutil.copytree(good, tmp_path / "dup")
    t = load_file(str(good / "adapter_model.safetensors"))
    t.update({k[len(P):]: v.clone() for k, v in t.items() if "layers.0.self_attn.q_proj" in k})
    save_file(t, str(dst / "adapter_model.safetensors"))
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with pytest.raises(AdapterError, match="both"):
        align_to_model(read_adapter(dst), base)


def test_configured_module_without_tensors_is_refused(tiny_dir, good, tmp_path):
    dst = shutil.copytree(good, tmp_path / "pruned")
    t = load_file(str(good / "adapter_model.safetensors"))
    save_file({k: v for k, v in t.items() if "layers.1.mlp.down_proj" not in k}, str(dst / "adapter_model.safetensors"))
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with pytest.raises(AdapterError, match=r"layers\.1\.mlp\.down_proj"):
        load_peft_adapter(base, dst)


def test_tensors_the_config_does_not_target_are_refused(tiny_dir, good, tmp_path):
    dst = shutil.copytree(good, tmp_path / "narrow")
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj"]  # down_proj tensors would be dropped by PEFT
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    with pytest.raises(AdapterError, match="not targeted"):
        load_peft_adapter(base, dst)


def test_records_are_aligned_for_our_own_loaders(tiny_dir, good, tmp_path):
    bad = _rekey(good, tmp_path / "v", VARIANTS["no_prefix_at_all"])
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    ref = read_adapter(good)
    got = align_to_model(read_adapter(bad), base)
    assert set(got.modules) == set(ref.modules)
    for m, f in ref.modules.items():
        assert torch.equal(got.modules[m].delta(), f.delta())
