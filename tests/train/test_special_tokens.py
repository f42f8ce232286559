"""Special tokens on every encode path (issue 13, item 3): a sequence starts with the tokenizer's
own start tokens (BOS for a Llama-2-style tokenizer, nothing for SmolLM2's) exactly once, also when
a chat template already writes BOS into the text; responses and continuations get none."""

from __future__ import annotations

import json

import pytest
import torch

from lorasoups.models.tiny import build_tiny_model, build_tiny_tokenizer
from lorasoups.prompts import IGNORE_INDEX, encode_pair, encode_prompt, render_prompt, start_tokens
from lorasoups.train.data import load_training_data, text_chunks, tokenize_text

BOS, EOS = 256, 257
LLAMA3_LIKE = ("{{ bos_token }}{% for m in messages %}<|u|>{{ m['role'] }}\n{{ m['content'] }}</s>"
               "{% endfor %}{% if add_generation_prompt %}<|u|>assistant\n{% endif %}")


def bos_tokenizer(chat_template: str | None = None):
    """A byte-level tokenizer (260 ids, like the tiny model's vocabulary) whose post-processor adds
    BOS ``<s>`` (id 256) before every text, as Llama-2's does; optionally with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from lorasoups.models.tiny import _byte_to_char

    b2u = _byte_to_char()
    vocab = {b2u[b]: b for b in range(256)}
    specials = ["<s>", "</s>", "<unk>", "<|u|>"]
    vocab.update({t: 256 + i for i, t in enumerate(specials)})
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<unk>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def test_start_tokens():
    assert start_tokens(bos_tokenizer()) == [BOS]
    assert start_tokens(build_tiny_tokenizer()) == []  # ChatML / SmolLM2-style: nothing added


def test_prompt_without_template_gets_one_bos_like_the_tokenizer():
    tok = bos_tokenizer()
    prompt = render_prompt(tok, "Add 2 and 3.")  # Alpaca format (no chat template)
    assert prompt.startswith("Below is an instruction")
    ids = encode_prompt(tok, prompt)
    assert ids == tok(prompt)["input_ids"]           # what the tokenizer itself gives
    assert ids[0] == BOS and ids.count(BOS) == 1


def test_template_that_writes_bos_is_not_doubled():
    tok = bos_tokenizer(LLAMA3_LIKE)
    prompt = render_prompt(tok, "Add 2 and 3.")
    assert prompt.startswith("<s><|u|>user\n")
    assert tok(prompt)["input_ids"][:2] == [BOS, BOS]  # the naive way doubles it
    ids = encode_prompt(tok, prompt)
    assert ids[0] == BOS and ids.count(BOS) == 1
    assert ids == tok(prompt, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [None, LLAMA3_LIKE])
def test_training_pairs_start_with_exactly_one_bos(tmp_path, template):
    tok = bos_tokenizer(template)
    enc = encode_pair(tok, render_prompt(tok, "Say hi."), "hi")
    assert enc["input_ids"][0] == BOS and enc["input_ids"].count(BOS) == 1
    assert enc["labels"][0] == IGNORE_INDEX
    assert enc["input_ids"][-3:] == [ord("h"), ord("i"), EOS] == enc["labels"][-3:]  # response: no BOS

    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": f"task {i}", "output": f"answer {i}"} for i in range(5)]))
    td = load_training_data([str(data)], tok, cutoff_len=512)
    assert len(td.examples) == 5
    for ex in td.examples:
        assert ex["input_ids"][0] == BOS and ex["input_ids"].count(BOS) == 1


def test_smollm_style_tokenizer_gets_no_bos():
    tok = build_tiny_tokenizer()
    enc = encode_pair(tok, render_prompt(tok, "Say hi."), "hi")
    assert enc["input_ids"] == tok(render_prompt(tok, "Say hi."))["input_ids"] + tok("hi<|im_end|>")["input_ids"]
    assert enc["input_ids"].count(tok.bos_token_id) == 2  # the template's own two <|im_start|>s
    chunks = text_chunks(tok, "abcdefghij" * 5, cutoff_len=16, overlap=4)
    assert sum(len(c["input_ids"]) for c in chunks) > 0 and all(c["labels"] == c["input_ids"] for c in chunks)


def test_raw_text_chunks_start_with_bos_and_cover_the_text():
    tok = bos_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. " * 6
    body = tokenize_text(tok, text)
    assert BOS not in body and body[-1] == EOS
    chunks = text_chunks(tok, text, cutoff_len=32, overlap=8)
    assert len(chunks) > 3
    rebuilt: list[int] = []
    for c in chunks:
        ids, labels = c["input_ids"], c["labels"]
        assert len(ids) <= 32 and ids[0] == BOS and ids.count(BOS) == 1
        assert labels[0] == IGNORE_INDEX and labels[1:] == ids[1:]
        piece = ids[1:]
        if rebuilt:  # consecutive windows share exactly 8 tokens
            assert rebuilt[-8:] == piece[:8]
            piece = piece[8:]
        rebuilt += piece
    assert rebuilt == body


@pytest.mark.parametrize("template", [None, LLAMA3_LIKE])
def test_generation_and_likelihood_see_one_bos(template):
    from lorasoups.eval.generate import HFGenerator

    model, _ = build_tiny_model(0)
    tok = bos_tokenizer(template)
    assert len(tok) == model.config.vocab_size
    gen = HFGenerator(model, tok, batch_size=2, bf16=False)
    prompts = [render_prompt(tok, "Count to 3."), render_prompt(tok, "Name a colour.")]
    for p in prompts:
        ids = gen.encode(p)
        assert ids[0] == BOS and ids.count(BOS) == 1
    assert len(gen.generate(prompts, max_new_tokens=3)) == 2

    # likelihood: the response's NLL is computed after [BOS] + prompt, once
    got = gen.nll(prompts, ["1 2 3", "blue"])
    for p, r, g in zip(prompts, ["1 2 3", "blue"], got):
        ids = encode_prompt(tok, p)
        resp = tok(r + "</s>", add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids + resp])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
        want = -sum(float(logp[len(ids) + j - 1, t]) for j, t in enumerate(resp))
        assert x[0, 0] == BOS and int((x == BOS).sum()) == 1
        assert g["n_tokens"] == len(resp) and g["sum"] == pytest.approx(want, rel=1e-4, abs=1e-4)
