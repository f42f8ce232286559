import time

import pytest
import torch

from lorasoups.errors import ModelError
from lorasoups.models import load_base, prepare_model, resolve_base
from lorasoups.paths import find_data_dir


def test_tiny_shapes(tiny_dir):
    model, tok = load_base(str(tiny_dir))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (64, 64)
    assert attn.k_proj.weight.shape == (32, 64)  # GQA: k/v differ from q
    assert len(tok) == model.config.vocab_size == 260
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_tiny_is_deterministic():
    from lorasoups.models.tiny import build_tiny_model

    a, _ = build_tiny_model(0)
    b, _ = build_tiny_model(0)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_tiny_by_name_and_second_call_is_instant(tiny_dir):
    t0 = time.time()
    assert prepare_model("tiny") == tiny_dir
    assert time.time() - t0 < 1.0
    assert resolve_base("tiny") == str(tiny_dir)


def test_unknown_local_path_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="did you mean 'tiny'"):
        resolve_base("tiyn")


def test_hub_id_without_network_is_clear():
    with pytest.raises(ModelError, match="Hub ids need a network"):
        load_base("someorg/some-model-that-is-not-here")


def test_data_dir_error_lists_places(tmp_path, monkeypatch):
    from lorasoups.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        find_data_dir(tmp_path / "nope")


@pytest.mark.slow
def test_smollm2_prepared(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    enc = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert len(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()) > 0
