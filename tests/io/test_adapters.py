import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorasoups.errors import AdapterError
from lorasoups.io.adapters import read_adapter, write_adapter
from lorasoups.provenance import sha256_dir
from lorasoups.testing import make_peft_adapter, peft_logits

CASES = {
    "r2": dict(r=2, lora_alpha=4, target_modules=("q_proj", "v_proj")),
    "r4_alpha16_all": dict(r=4, lora_alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=("q_proj", "k_proj", "down_proj")),
    "rank_pattern": dict(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "up_proj"),
                         rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 3}, alpha_pattern={"up_proj": 3.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_logits(tiny_dir, tmp_path, input_ids, case):
    src = make_peft_adapter(tiny_dir, tmp_path / "src", seed=3, **CASES[case])
    before = sha256_dir(src)
    rec = read_adapter(src)
    out = write_adapter(rec, tmp_path / "out")
    assert sha256_dir(src) == before  # input untouched
    ref = peft_logits(tiny_dir, src, input_ids)
    got = peft_logits(tiny_dir, out, input_ids)
    base = peft_logits(tiny_dir, None, input_ids)
    assert (ref - base).abs().max() > 1e-3  # the adapter does something
    assert (ref - got).abs().max() <= 1e-5


def test_scales_resolved(tiny_dir, tmp_path):
    rec = read_adapter(make_peft_adapter(tiny_dir, tmp_path / "a", **CASES["rank_pattern"]))
    q0 = rec.modules["model.layers.0.self_attn.q_proj"]
    q1 = rec.modules["model.layers.1.self_attn.q_proj"]
    v0 = rec.modules["model.layers.0.self_attn.v_proj"]
    up = rec.modules["model.layers.0.mlp.up_proj"]
    assert (q0.r, q0.scale) == (4, 2.0)
    assert (q1.r, q1.scale) == (3, 8 / 3)
    assert (v0.r, v0.scale) == (2, 4.0)
    assert (up.r, up.scale) == (4, 0.75)
    rs = read_adapter(make_peft_adapter(tiny_dir, tmp_path / "b", **CASES["rslora"]))
    assert all(math.isclose(f.scale, 8 / 2.0) for f in rs.modules.values())


def test_write_is_exact_in_products(tiny_dir, tmp_path):
    rec = read_adapter(make_peft_adapter(tiny_dir, tmp_path / "a", **CASES["rank_pattern"]))
    back = read_adapter(write_adapter(rec, tmp_path / "o"))
    assert set(back.modules) == set(rec.modules)
    for m in rec.modules:
        assert torch.allclose(back.modules[m].delta(), rec.modules[m].delta(), atol=1e-7)


def test_no_overwrite_without_flag(tiny_dir, tmp_path):
    rec = read_adapter(make_peft_adapter(tiny_dir, tmp_path / "a"))
    write_adapter(rec, tmp_path / "o")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_adapter(rec, tmp_path / "o")
    write_adapter(rec, tmp_path / "o", overwrite=True)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(AdapterError):
        write_adapter({}, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


# ---- bad inputs: each names the file and the problem ----

@pytest.fixture
def good(tiny_dir, tmp_path):
    return make_peft_adapter(tiny_dir, tmp_path / "good")


def _copy(good, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(good, d)
    return d


def _edit_config(d, **kw):
    p = d / "adapter_config.json"
    c = json.loads(p.read_text())
    c.update(kw)
    p.write_text(json.dumps(c))


def test_missing_config(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    (d / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match=r"x/adapter_config.json: missing"):
        read_adapter(d)


def test_unreadable_config(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"adapter_config.json: unreadable"):
        read_adapter(d)


def test_missing_weights(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: missing"):
        read_adapter(d)


def test_unreadable_weights(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    (d / "adapter_model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: unreadable"):
        read_adapter(d)


def test_shape_disagrees_with_config(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    _edit_config(d, r=8)
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: module .* disagree with the config's rank r=8"):
        read_adapter(d)


def test_nan_values(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    k = next(k for k in w if "lora_B" in k)
    w[k][0, 0] = float("nan")
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: module .* NaN or inf"):
        read_adapter(d)


def test_inf_values(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    k = next(k for k in w if "lora_A" in k)
    w[k][0, 0] = float("inf")
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"NaN or inf"):
        read_adapter(d)


def test_dora_refused(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    _edit_config(d, use_dora=True)
    with pytest.raises(AdapterError, match=r"adapter_config.json: DoRA"):
        read_adapter(d)


def test_lora_bias_refused(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    _edit_config(d, lora_bias=True)
    with pytest.raises(AdapterError, match=r"adapter_config.json: adapters with lora_bias"):
        read_adapter(d)


def test_modules_to_save_refused(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    _edit_config(d, modules_to_save=["lm_head"])
    with pytest.raises(AdapterError, match=r"adapter_config.json: modules_to_save"):
        read_adapter(d)


def test_embedding_tensor_refused(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    w["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 260)
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: embedding LoRA tensor"):
        read_adapter(d)


def test_unknown_tensor_refused(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    w["base_model.model.lm_head.weight"] = torch.zeros(4, 4)
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"unexpected tensor 'base_model.model.lm_head.weight'"):
        read_adapter(d)


def test_pickle_refused_unless_allowed(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    (d / "adapter_model.safetensors").unlink()
    torch.save(w, d / "adapter_model.bin")
    with pytest.raises(AdapterError, match=r"adapter_model.bin: pickled weights are refused"):
        read_adapter(d)
    rec = read_adapter(d, allow_pickle=True)
    ref = read_adapter(good)
    for m in ref.modules:
        assert torch.equal(rec.modules[m].delta(), ref.modules[m].delta())


def test_missing_partner(good, tmp_path):
    d = _copy(good, tmp_path, "x")
    w = load_file(str(d / "adapter_model.safetensors"))
    k = next(k for k in w if "lora_B" in k)
    del w[k]
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=r"has no lora_B weight"):
        read_adapter(d)


def test_missing_folder(tmp_path):
    with pytest.raises(AdapterError, match=r"nope: adapter folder does not exist"):
        read_adapter(tmp_path / "nope")
