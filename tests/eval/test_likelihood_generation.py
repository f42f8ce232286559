"""Likelihood metrics and generation on the tiny model: exact against direct computations."""

import pytest
import torch

from lorasoups.eval.generate import HFGenerator, common_prefix_len
from lorasoups.eval.registry import get_task
from lorasoups.eval.runner import evaluate
from lorasoups.eval.samples import read_samples
from lorasoups.models import load_base
from lorasoups.prompts import IGNORE_INDEX, encode_pair


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_base(str(tiny_dir))


def direct_nll(model, tok, prompt: str, response: str) -> float:
    """Mean NLL of the response tokens (end-of-turn included), one unpadded forward pass."""
    e = encode_pair(tok, prompt, response)
    ids = torch.tensor([e["input_ids"]])
    labels = torch.tensor(e["labels"])
    with torch.no_grad():
        logits = model(ids).logits[0].float()  # (L, V)
    lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[0, 1:, None])[:, 0]  # log p(token t+1 | ..t)
    keep = labels[1:] != IGNORE_INDEX
    return float(-lp[keep].mean())


def test_gold_and_control_nll_match_direct_computation(fake_data, tmp_path, tiny_dir, tiny):
    model, tok = tiny
    out = tmp_path / "lk"
    res = evaluate(str(tiny_dir), None, ["gsm_hard"], out, data_dir=fake_data, generate=False, shots=1,
                   bf16=False, batch_size=2)
    task = res["tasks"]["gsm_hard"]
    assert set(task["metrics"]) == {"nll_gold", "nll_control", "nll_gap", "gold_preferred"}
    assert task["metrics"]["nll_gold"]["n"] == 3
    items = {it.id: it for it in get_task("gsm_hard").load_items(fake_data)}
    recs = read_samples(out / "gsm_hard" / "samples.jsonl")
    gaps = []
    for r in recs:
        it = items[r["id"]]
        ctrl = r["nll"]["control_id"]
        assert ctrl != r["id"] and items[ctrl].gold_text != it.gold_text  # a different item's answer
        assert r["completion"] is None
        assert r["nll"]["nll_gold"] == pytest.approx(direct_nll(model, tok, r["prompt"], it.gold_text), abs=1e-4)
        assert r["nll"]["nll_control"] == pytest.approx(direct_nll(model, tok, r["prompt"], items[ctrl].gold_text), abs=1e-4)
        gaps.append(r["nll"]["nll_control"] - r["nll"]["nll_gold"])
        # only answer tokens count: n_tokens = response tokens + end-of-turn token
        n_resp = len(tok(it.gold_text + tok.eos_token, add_special_tokens=False)["input_ids"])
        assert r["nll"]["n_tokens_gold"] == n_resp
    assert task["metrics"]["nll_gap"]["value"] == pytest.approx(sum(gaps) / 3, abs=1e-6)
    assert any("likelihood only" in n for n in task["notes"])


def test_prefix_modes_agree_with_no_cache(fake_data, tiny):
    model, tok = tiny
    t = get_task("gsm_hard")
    items = t.load_items(fake_data)
    demos = t.load_demos(fake_data, shots=1)
    prompts = [t.render(tok, it, demos) for it in items]
    golds = [it.gold_text for it in items]
    assert common_prefix_len([tok(p, add_special_tokens=False)["input_ids"] for p in prompts]) > 50
    ref = HFGenerator(model, tok, batch_size=1, prefix_cache=False, bf16=False)
    base = ref.nll(prompts, golds)
    gen_ref = ref.generate(prompts, 6)
    for mode in ("copy", "shared"):
        g = HFGenerator(model, tok, batch_size=2, prefix_mode=mode, bf16=False)
        assert g.prefix_mode == mode
        got = g.nll(prompts, golds)
        assert [x["nll"] for x in got] == pytest.approx([x["nll"] for x in base], abs=1e-5)
        assert g.generate(prompts, 6) == gen_ref
        assert g.stats["prefix_tokens_reused"] > 0
    # auto: decoding shares the prefix, scoring copies it into the cache (SDPA's fused kernel)
    g = HFGenerator(model, tok, batch_size=2, bf16=False)
    assert (g.prefix_mode, g._nll_mode) == ("shared", "copy")
    modes, real_start = [], g._start
    g._start = lambda *a, **k: (modes.append(k.get("mode")), real_start(*a, **k))[1]
    assert [x["nll"] for x in g.nll(prompts, golds)] == pytest.approx([x["nll"] for x in base], abs=1e-5)
    assert modes and set(modes) == {"copy"}


def test_generation_matches_hf_generate(tiny):
    model, tok = tiny
    prompts = ["<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nsomething longer here<|im_end|>\n<|im_start|>assistant\n"]
    g = HFGenerator(model, tok, batch_size=2, bf16=False)
    ours = g.generate(prompts, 10)
    for p, o in zip(prompts, ours):
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True) == o
