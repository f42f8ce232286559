"""A tiny, seeded, randomly initialised Llama with a byte-level tokenizer, for fast tests.

Shapes: hidden 64, intermediate 128, 2 layers, 4 attention heads and 2 KV heads (so k_proj /
v_proj are (32, 64) while q_proj is (64, 64)), vocabulary 256 bytes + 4 special tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

# ChatML, as SmolLM2-Instruct uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_to_char() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE: printable Latin-1 bytes map to
    themselves, the other 68 bytes to code points from 256 upwards, in byte order."""
    keep = [b for b in range(256) if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: ids 0-255 are bytes, then the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    b2u = _byte_to_char()
    vocab = {b2u[b]: b for b in range(256)}
    assert set(vocab) == set(byte_chars)
    for i, t in enumerate(SPECIAL_TOKENS):
        vocab[t] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def build_tiny_model(seed: int = 0):
    """Return (LlamaForCausalLM, tokenizer), deterministic for ``seed``; fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.eval()
    return model, tok


def save_tiny(folder: Path, seed: int = 0) -> None:
    """Save the tiny model and tokenizer as a normal Hugging Face folder."""
    model, tok = build_tiny_model(seed)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
