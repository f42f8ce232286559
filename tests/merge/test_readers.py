"""Merged adapter files mean the same to every reader (issue #13, item 9).

Inputs use ``layers_to_transform``, ``exclude_modules``, a regex ``target_modules``, rsLoRA and
mixed ranks (``rank_pattern``, and modules present in only some inputs). For each output:
(a) PEFT's ΔW equals the intended merge, computed from the inputs as PEFT itself loads them;
(b) a vLLM-style reader (global ``r`` and ``lora_alpha`` from the config only) and a
llama.cpp-style reader (global ``lora_alpha``, rank from each tensor's shape) give the same ΔW;
(c) PEFT creates a LoRA layer for exactly the modules that have tensors.
"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorasoups.io.adapters import write_adapter, read_adapter
from lorasoups.merge.driver import merge_adapters
from lorasoups.testing import make_peft_adapter

P = "base_model.model."

INPUTS = {
    "layers_to_transform": dict(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "up_proj"),
                                layers_to_transform=[0], layers_pattern="layers"),
    "exclude_modules": dict(r=2, lora_alpha=4, target_modules=("q_proj", "k_proj", "o_proj", "down_proj"),
                            exclude_modules=["model.layers.1.self_attn.k_proj", "o_proj"]),
    "regex_rslora": dict(r=8, lora_alpha=6, use_rslora=True, target_modules=r".*\.1\.(self_attn\.q_proj|mlp\.(up|down)_proj)"),
    "rank_pattern": dict(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "gate_proj"),
                         rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 6}, alpha_pattern={"gate_proj": 3.0}),
}


@pytest.fixture(scope="module")
def inputs(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("readers")
    return {k: make_peft_adapter(tiny_dir, d / k, seed=20 + i, std=0.1, **kw) for i, (k, kw) in enumerate(INPUTS.items())}


def _peft(tiny_dir, folder):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, str(folder))
    return {n[len(P):]: m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def peft_deltas(tiny_dir, folder):
    """ΔW per module as PEFT computes it (its own get_delta_weight: scaling · B · A)."""
    with torch.no_grad():
        return {m: layer.get_delta_weight("default").float() for m, layer in _peft(tiny_dir, folder).items()}


def _tensors(folder):
    t = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for k, v in t.items():
        assert k.startswith(P), k
        mod, kind = k[len(P):].rsplit(".", 2)[0], k.rsplit(".", 2)[1]
        out.setdefault(mod, {})[kind] = v.float()
    return out


def vllm_style_deltas(folder):
    """vLLM: scaling = lora_alpha / r (or / sqrt(r) with use_rslora) from the *global* config values;
    rank_pattern / alpha_pattern ignored; the global r must hold every tensor's rank."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    out = {}
    for m, ab in _tensors(folder).items():
        assert ab["lora_A"].shape[0] <= r
        out[m] = s * ab["lora_B"] @ ab["lora_A"]
    return out


def llamacpp_style_deltas(folder):
    """llama.cpp (convert_lora_to_gguf.py + runtime): only the global lora_alpha is stored; the
    scale is alpha / rank with rank read from the tensor shape (alpha 0 means scale 1)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    alpha = float(cfg["lora_alpha"])
    out = {}
    for m, ab in _tensors(folder).items():
        rank = ab["lora_B"].shape[1]
        s = alpha / rank if alpha else 1.0
        out[m] = s * ab["lora_B"] @ ab["lora_A"]
    return out


def _same(a, b, atol=1e-6):
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))
    for m in a:
        assert torch.allclose(a[m], b[m], atol=atol, rtol=1e-5), (m, (a[m] - b[m]).abs().max())


def check_every_reader(tiny_dir, folder, intended=None):
    layers = _peft(tiny_dir, folder)
    tensors = _tensors(folder)
    # (c) a LoRA layer exactly where there are tensors, each holding the file's tensors
    assert set(layers) == set(tensors)
    for m, layer in layers.items():
        assert torch.equal(layer.lora_A["default"].weight.detach(), tensors[m]["lora_A"])
        assert torch.equal(layer.lora_B["default"].weight.detach(), tensors[m]["lora_B"])
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(tensors)
    assert not cfg["rank_pattern"] and not cfg["alpha_pattern"] and not cfg.get("layers_to_transform")
    p = peft_deltas(tiny_dir, folder)
    # (b) the three readers agree
    _same(p, vllm_style_deltas(folder))
    _same(p, llamacpp_style_deltas(folder))
    # (a) the intended merge
    if intended is not None:
        _same(p, intended, atol=1e-5)
    return p


def _intended(tiny_dir, folders, weights):
    out = {}
    for f, w in zip(folders, weights):
        for m, d in peft_deltas(tiny_dir, f).items():
            out[m] = out.get(m, 0) + w * d
    return out


def test_inputs_are_what_they_claim(tiny_dir, inputs):
    mods = {k: set(peft_deltas(tiny_dir, f)) for k, f in inputs.items()}
    assert all("layers.0." in m for m in mods["layers_to_transform"])
    assert "model.layers.1.self_attn.k_proj" not in mods["exclude_modules"] and \
        "model.layers.0.self_attn.k_proj" in mods["exclude_modules"]
    assert mods["regex_rslora"] == {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.up_proj",
                                    "model.layers.1.mlp.down_proj"}
    ranks = {f.r for f in read_adapter(inputs["rank_pattern"]).modules.values()}
    assert ranks == {2, 4, 6}


@pytest.mark.parametrize("names", [("layers_to_transform", "exclude_modules"), ("regex_rslora", "rank_pattern"),
                                   tuple(INPUTS)])
def test_concat_output_every_reader_same_delta(tiny_dir, inputs, tmp_path, names):
    folders = [inputs[n] for n in names]
    w = [0.7, -0.4, 1.3, 0.5][: len(folders)]
    out = merge_adapters(folders, "concat", tmp_path / "o", weights=w)
    info = json.loads((out / "merge_info.json").read_text())
    assert len(info["output_ranks"]) > 1  # the case that needs padding
    check_every_reader(tiny_dir, out, _intended(tiny_dir, folders, w))


def test_linear_and_ties_outputs_every_reader_same_delta(tiny_dir, inputs, tmp_path):
    folders = list(inputs.values())
    w = [0.5, 1.0, -0.5, 0.8]
    out = merge_adapters(folders, "linear", tmp_path / "lin", weights=w, rank=20)  # rank ≥ Σr: exact
    check_every_reader(tiny_dir, out, _intended(tiny_dir, folders, w))
    out = merge_adapters(folders, "ties", tmp_path / "ties", params={"density": 0.5})
    check_every_reader(tiny_dir, out)


def test_write_adapter_pads_mixed_ranks(tiny_dir, inputs, tmp_path):
    rec = read_adapter(inputs["rank_pattern"])
    out = write_adapter(rec, tmp_path / "w")
    assert {v.shape for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_A" in k} \
        == {(6, 64)}
    check_every_reader(tiny_dir, out, peft_deltas(tiny_dir, inputs["rank_pattern"]))
