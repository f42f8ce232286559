"""The one LM loss (lorasoups.train.loss): value and gradients equal the model's own loss."""

from __future__ import annotations

import pytest
import torch

from lorasoups.models import load_base
from lorasoups.train.data import collate
from lorasoups.train.loss import lm_loss, lm_loss_sum


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    exs = []
    for i, length in enumerate([9, 14, 5, 12]):
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        labels = [-100] * (2 + i % 3) + ids[2 + i % 3:]  # a masked prompt of 2-4 tokens
        exs.append({"input_ids": ids, "labels": labels})
    return collate(exs, 0)  # right padding, labels -100 on padding


def _peft(tiny_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = load_base(str(tiny_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("chunk", [3, 1024])
def test_value_and_grads_match_model_loss(tiny_dir, chunk):
    model = _peft(tiny_dir)
    b = _batch(model.config.vocab_size)
    ref = model(**b).loss                      # transformers' own loss (full logits)
    ref.backward()
    ref_g = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    s, n = lm_loss_sum(model, b, chunk=chunk)  # chunk=3: several checkpointed chunks
    assert n == int((b["labels"][:, 1:] != -100).sum()) and n > 3
    loss = s / n
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    assert ref_g
    for k, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_g[k], atol=1e-6, rtol=1e-4), k


def test_no_label_tokens_and_fallback(tiny_dir):
    model, _ = load_base(str(tiny_dir))
    b = _batch(model.config.vocab_size, seed=1)
    with torch.no_grad():
        ref = float(model(**b).loss)
        assert float(lm_loss(model, b, chunk=2)) == pytest.approx(ref, abs=1e-5)
        model.config.logit_scale = 2.0  # not a plain head any more -> full-logits path, same definition
        s, n = lm_loss_sum(model, b)
        del model.config.logit_scale
        assert float(s) / n == pytest.approx(ref, abs=1e-5)
    empty = dict(b, labels=torch.full_like(b["labels"], -100))
    s, n = lm_loss_sum(model, empty)
    assert n == 0 and float(s) == 0.0
    with pytest.raises(ValueError, match="no label token"):
        lm_loss(model, empty)


def test_bf16_autocast_close_to_model_loss(tiny_dir):
    model, _ = load_base(str(tiny_dir))
    b = _batch(model.config.vocab_size, seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = float(model(**b).loss)
        got = float(lm_loss(model, b, chunk=4))
    assert got == pytest.approx(ref, rel=1e-2)


def test_trainer_loss_equals_model_loss(tiny_dir, tmp_path):
    from transformers import TrainingArguments

    from lorasoups.train.sft import lean_trainer_class

    model = _peft(tiny_dir)
    b = _batch(model.config.vocab_size, seed=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], label_names=["labels"])
    tr = lean_trainer_class()(model=model, args=args)
    with torch.no_grad():
        ref = model(**b).loss
        n = (b["labels"][:, 1:] != -100).sum()
        assert float(tr.compute_loss(model, b)) == pytest.approx(float(ref), abs=1e-5)
        # under gradient accumulation the Trainer passes the token count of the whole step
        half = float(tr.compute_loss(model, b, num_items_in_batch=2 * n))
        assert half == pytest.approx(float(ref) / 2, abs=1e-5)
        loss, out = tr.compute_loss(model, b, return_outputs=True)
        assert out["loss"] is loss



def test_chunk_rows_shrink_with_the_vocabulary(tiny_dir, monkeypatch):
    """The head runs on at most LOGITS_BUDGET // vocab rows at a time (a large vocabulary gets
    smaller chunks: 192 rows for Gemma 3's 262,144 tokens), and the loss is the same however it is
    chunked."""
    from lorasoups.train import loss as L

    model = _peft(tiny_dir)
    vocab = model.config.vocab_size
    b = _batch(vocab)
    n_scored = int((b["labels"][:, 1:] != -100).sum())
    seen = []
    real = L._chunk_ce_sum

    def spy(head, h, t, w=None):
        seen.append(h.shape[0])
        return real(head, h, t, w)

    monkeypatch.setattr(L, "_chunk_ce_sum", spy)
    with torch.no_grad():
        ref, _ = L.lm_loss_sum(model, b, chunk=1024)
        assert seen == [n_scored]  # the default budget holds every scored row of this small vocabulary
        seen.clear()
        monkeypatch.setattr(L, "LOGITS_BUDGET", 10 * vocab)  # room for 10 rows of logits per chunk
        got, _ = L.lm_loss_sum(model, b, chunk=1024)
    assert seen == [10] * (n_scored // 10) + ([n_scored % 10] if n_scored % 10 else [])
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
