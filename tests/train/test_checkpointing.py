"""Activation (gradient) checkpointing in the three trainers — skill LoRA / DATA-MIX (HF Trainer),
CAT coefficients and MoE routers (the training kit): the same losses and trained weights as
without it, and the decoder layers really recomputed (each layer's forward runs twice per
micro-batch instead of once)."""

import json

import pytest
import torch
from transformers.models.llama import modeling_llama

from lorasoups.io.adapters import read_adapter
from lorasoups.models import load_base
from lorasoups.moe import attach_moe, train_moe
from lorasoups.testing import ALL_LLAMA_TARGETS, make_peft_adapter
from lorasoups.train.cat import fit_coefficients
from lorasoups.train.fused import attach_cat
from lorasoups.train.sft import train_lora


@pytest.fixture
def layer_calls(monkeypatch):
    """Counts attention forward calls (inside each decoder layer, so inside its checkpoint) while
    gradients are enabled: training forwards and recomputations. (The layer's own ``forward`` is
    transformers' checkpointing wrapper and must stay unpatched.)"""
    calls = {"n": 0}
    real = modeling_llama.LlamaAttention.forward

    def counted(self, *a, **k):
        if torch.is_grad_enabled():
            calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", counted)
    return calls


def _examples(n=8, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 256, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return out


@pytest.fixture(scope="module")
def skill_adapters(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_adapters")
    return [make_peft_adapter(tiny_dir, d / f"a{i}", r=4, lora_alpha=8, target_modules=ALL_LLAMA_TARGETS,
                              seed=20 + i, std=0.2) for i in range(2)]


def test_cat_same_coefficients_layers_recomputed(tiny_dir, skill_adapters, layer_calls):
    records = [read_adapter(p) for p in skill_adapters]
    runs = {}
    for on in (False, True):
        model, _ = load_base(str(tiny_dir))
        n_layers = model.config.num_hidden_layers
        h = attach_cat(model, records, init="uniform")
        layer_calls["n"] = 0
        log = fit_coefficients(model, h, _examples(), pad_token_id=0, learning_rate=0.1, max_steps=3, batch_size=4,
                               gradient_checkpointing=on)
        runs[on] = ([r["loss"] for r in log if r["loss"] is not None], h.coefficients.logits.detach().clone(),
                    layer_calls["n"])
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # off again after
        assert not getattr(model, "_require_grads_hooks", None)  # and the embedding hook removed
    (l0, c0, n0), (l1, c1, n1) = runs[False], runs[True]
    assert l1 == pytest.approx(l0, abs=1e-6) and torch.allclose(c0, c1, atol=1e-6)
    assert n0 == 3 * n_layers and n1 == 2 * n0  # 3 micro-batches: once each, then forward + recompute


def test_moe_same_routers_layers_recomputed(tiny_dir, skill_adapters, layer_calls, tmp_path):
    logs, calls = {}, {}
    for on in (False, True):
        layer_calls["n"] = 0
        out = train_moe(str(tiny_dir), skill_adapters, _examples(), tmp_path / f"moe_{on}", top_k=1, learning_rate=0.05,
                        max_steps=2, batch_size=4, val_fraction=0.0, progress=False, gradient_checkpointing=on)
        logs[on] = [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]
        calls[on] = layer_calls["n"]
    assert logs[True] == pytest.approx(logs[False], abs=1e-6)
    assert calls[False] > 0 and calls[True] == 2 * calls[False]


def test_skill_lora_same_curve_layers_recomputed(tiny_dir, tmp_path, layer_calls):
    recs = [{"instruction": f"Say {i % 3}.", "input": "", "output": ["one!", "two!", "three!"][i % 3]} for i in range(16)]
    f = tmp_path / "d.json"
    f.write_text(json.dumps(recs))
    curves, calls = {}, {}
    for on in (False, True):
        layer_calls["n"] = 0
        out = train_lora(str(tiny_dir), [str(f)], tmp_path / f"s_{on}", max_steps=3, save_steps=100, batch_size=4,
                         cutoff_len=64, learning_rate=5e-3, warmup_steps=0, precision="fp32", lora_dropout=0.0,
                         progress=False, gradient_checkpointing=on)
        lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
        curves[on] = [x["loss"] for x in lines if "loss" in x]
        calls[on] = layer_calls["n"]
        assert json.loads((out / "train_info.json").read_text())["options"]["gradient_checkpointing"] is on
    assert curves[True] == pytest.approx(curves[False], abs=1e-5)
    assert calls[False] > 0 and calls[True] == 2 * calls[False]
