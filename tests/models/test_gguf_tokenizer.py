"""The embedded model's tokenizer is the model's own (issue 13, item 4).

Expected token ids never come from the code under test: they come from a plain-Python reference
of byte-level BPE written here after llama.cpp's description of the GGUF pre-tokenizer types
(``llama-vocab.cpp``: ``smollm`` isolates each ``\\p{N}`` character, then the GPT-2 regex), from
hand-written token lists, and (slow tests) from SmolLM2 token ids published by a third party.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import regex

from lorasoups.errors import ModelError

# ----------------------------------------------------------------------------------------------
# Independent reference (no `tokenizers`): pre-tokenise, then merge by rank, leftmost on ties.
# ----------------------------------------------------------------------------------------------

GPT2_RE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
NUMERIC_RE = regex.compile(r"(\p{N})")


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes are themselves, the
    others 256, 257, ... in byte order)."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_SYMBOL = _byte_symbols()


def ref_pieces(text: str, pre: str) -> list[str]:
    if pre == "gpt2":
        return GPT2_RE.findall(text)
    assert pre == "smollm", pre
    out: list[str] = []
    for part in NUMERIC_RE.split(text):
        if part:
            out.extend([part] if NUMERIC_RE.fullmatch(part) else GPT2_RE.findall(part))
    return out


def ref_bpe(piece: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    sym = [BYTE_SYMBOL[b] for b in piece.encode("utf-8")]
    while len(sym) > 1:
        best = min(range(len(sym) - 1), key=lambda i: (ranks.get((sym[i], sym[i + 1]), 1 << 60), i))
        if (sym[best], sym[best + 1]) not in ranks:
            break
        sym[best:best + 2] = [sym[best] + sym[best + 1]]
    return sym


def ref_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]], pre: str,
               specials: tuple[str, ...] = ()) -> list[int]:
    """Token ids of ``text`` (nothing added); symbols outside ``vocab`` are dropped (no unk token)."""
    ranks = {m: i for i, m in enumerate(merges)}
    parts = regex.split("(" + "|".join(map(regex.escape, specials)) + ")", text) if specials else [text]
    ids: list[int] = []
    for part in parts:
        if part in specials:
            ids.append(vocab[part])
            continue
        for p in ref_pieces(part, pre):
            ids.extend(vocab[s] for s in ref_bpe(p, ranks) if s in vocab)
    return ids


# Strings with digits, runs of spaces, tabs, newlines, ½, accents, emoji, special tokens.
STRINGS = [
    "Total:  5 apples",
    "Hello world! 123",
    "  multiple   spaces",
    "He has 12 apples and 3.5 pears; 1,000,000 total.",
    "x  42\t\t7\n\n8\n 9   10",
    "½ cup plus 1½ cups = 2 cups; ¾ is 0.75",
    "Café déjà vu, naïve résumé, Ångström, São Paulo",
    "Emoji 😀👍🏽🇺🇸 and ❤️ 3🎉4",
    "def f(x):\n    return x ** 2  # 10 spaces:          end\n\ttab",
    "#### 72\n\n#### 1,234",
    "I'm sure they'll say it's 2's 3'd",
    "<|im_start|>user\nWhat is 7*8?<|im_end|>\n<|im_start|>assistant\n56<|im_end|>",
    "   \n\n  \t 0",
    "٣ Arabic-Indic and ² superscript and Ⅻ roman",
    "",
]

# ----------------------------------------------------------------------------------------------
# Fast: the pre-tokenizer built on a tiny vocabulary
# ----------------------------------------------------------------------------------------------

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# merges of a tiny vocabulary; some join digits or a space and a digit, which SmolLM2's
# pre-tokenizer must never let happen
TINY_MERGES = [("Ġ", "Ġ"), ("Ġ", "a"), ("p", "p"), ("Ġa", "pp"), ("1", "2"), ("Ġ", "5"), ("Ċ", "Ċ"),
               ("ĠĠ", "Ġ"), ("Â", "½"), ("Ġ", "Â½"), ("l", "e"), ("Ġapp", "le"), ("Ġapple", "s")]


def tiny_meta(pre: str = "smollm", add_bos: bool = False) -> dict:
    tokens = SPECIAL + [BYTE_SYMBOL[b] for b in range(256)]
    for a, b in TINY_MERGES:
        if a + b not in tokens:
            tokens.append(a + b)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)),
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in TINY_MERGES],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": add_bos,
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "llama.context_length": 512,
    }


def _ref_for(meta: dict):
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    return lambda text: ref_encode(text, vocab, merges, meta["tokenizer.ggml.pre"], tuple(SPECIAL))


def test_tiny_smollm_pre_tokenizer_hand_checked():
    from lorasoups.models.embedded import build_bpe_tokenizer

    tok = build_bpe_tokenizer(tiny_meta())
    # the example: the two spaces stay one token, the digit stands alone
    assert tok.tokenize("Total:  5 apples") == ["T", "o", "t", "a", "l", ":", "ĠĠ", "5", "Ġapples"]
    assert tok.tokenize("a 5") == ["a", "Ġ", "5"]          # never 'Ġ5', although it is a merge
    assert tok.tokenize("x12") == ["x", "1", "2"]          # never '12'
    assert tok.tokenize("\n\n5") == ["ĊĊ", "5"]
    assert tok.tokenize("a ½") == ["a", "Ġ", "Â½"]         # ½ is numeric: split off like a digit
    # plain GPT-2 (the old, wrong conversion) would give these
    gpt2 = build_bpe_tokenizer(tiny_meta("gpt2"))
    assert gpt2.tokenize("Total:  5 apples")[6:] == ["Ġ", "Ġ5", "Ġapples"]
    assert gpt2.tokenize("x12") == ["x", "12"]


@pytest.mark.parametrize("pre", ["smollm", "gpt2"])
def test_tiny_ids_equal_reference(pre):
    from lorasoups.models.embedded import build_bpe_tokenizer

    meta = tiny_meta(pre)
    tok, ref = build_bpe_tokenizer(meta), _ref_for(meta)
    for s in STRINGS:
        assert tok(s, add_special_tokens=True)["input_ids"] == ref(s), s
        assert tok.decode(tok(s)["input_ids"]) == s  # byte-level: lossless


def test_tiny_special_tokens_and_template(tmp_path):
    from transformers import AutoTokenizer

    from lorasoups.models.embedded import build_bpe_tokenizer

    tok = build_bpe_tokenizer(tiny_meta())
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # what every later load sees
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert tok("12")["input_ids"] == [tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")]
    assert tok.model_max_length == 512 and tok.clean_up_tokenization_spaces is False
    text = tok.apply_chat_template([{"role": "user", "content": "a 5"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\na 5<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok("a , b . 1")["input_ids"]) == "a , b . 1"  # no space clean-up

    with_bos = build_bpe_tokenizer(tiny_meta(add_bos=True))
    assert with_bos("x")["input_ids"] == [1, with_bos.convert_tokens_to_ids("x")]


def test_unknown_pre_or_model_is_refused():
    from lorasoups.models.embedded import build_bpe_tokenizer

    with pytest.raises(ModelError, match="pre-tokenizer 'qwen2' is not supported"):
        build_bpe_tokenizer(tiny_meta("qwen2"))
    with pytest.raises(ModelError, match="tokenizer model 'llama'"):
        build_bpe_tokenizer({**tiny_meta(), "tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelError, match="merge 0"):
        build_bpe_tokenizer({**tiny_meta(), "tokenizer.ggml.merges": ["Ġ nope"]})


def test_cached_folder_of_an_old_build_is_rebuilt(tmp_path, monkeypatch):
    from lorasoups import models

    monkeypatch.setenv("LORASOUPS_HOME", str(tmp_path))
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "config.json").write_text("{}")

    monkeypatch.setitem(models.EMBEDDED, "tiny", replace(models.EMBEDDED["tiny"], build=build, version=1))
    folder = models.prepare_model("tiny")
    assert len(builds) == 1 and models.is_prepared("tiny")
    models.prepare_model("tiny")
    assert len(builds) == 1                                   # cached
    monkeypatch.setitem(models.EMBEDDED, "tiny", replace(models.EMBEDDED["tiny"], version=2))
    assert not models.is_prepared("tiny")
    assert models.prepare_model("tiny") == folder and len(builds) == 2   # old recipe: rebuilt
    assert json.loads((folder / ".lorasoups-complete").read_text())["version"] == 2
    # a marker from before versioning (no "version" key) counts as version 1
    (folder / ".lorasoups-complete").write_text(json.dumps({"name": "tiny"}))
    assert not models.is_prepared("tiny")


def test_smollm2_build_is_versioned_past_the_old_tokenizer():
    from lorasoups.models import EMBEDDED

    assert EMBEDDED["smollm2-135m"].version >= 2


# ----------------------------------------------------------------------------------------------
# Slow: the real SmolLM2 folder
# ----------------------------------------------------------------------------------------------

# SmolLM2 token ids for GGUF pre type "smollm", published as a tokenizer self-check by a third
# party (a GGUF tokenizer packer on GitHub); identical across SmolLM2 sizes (one vocabulary).
PUBLISHED = {
    "Hello, we can use": [19556, 28, 392, 416, 722],
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face":
        [2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182],
    "\n": [198],
    "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
    "Café déjà vu.": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
    "  multiple   spaces": [216, 2701, 256, 5600],
}


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.mark.slow
def test_smollm2_published_ids(smollm2_tok):
    for text, ids in PUBLISHED.items():
        assert smollm2_tok(text)["input_ids"] == ids, text


@pytest.mark.slow
def test_smollm2_ids_equal_reference(smollm2_tok, smollm2_dir):
    j = json.loads((smollm2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = j["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in j["model"]["merges"]]
    assert len(vocab) == 49152 and len(merges) == 48900
    specials = tuple(t["content"] for t in j["added_tokens"])
    assert smollm2_tok.tokenize("Total:  5 apples") == ["Total", ":", "ĠĠ", "5", "Ġapples"]
    for s in STRINGS + list(PUBLISHED):
        assert smollm2_tok(s)["input_ids"] == ref_encode(s, vocab, merges, "smollm", specials), s


@pytest.mark.slow
def test_smollm2_special_tokens_and_chat_template(smollm2_tok):
    t = smollm2_tok
    assert (t.bos_token, t.bos_token_id) == ("<|im_start|>", 1)
    assert (t.eos_token, t.eos_token_id) == ("<|im_end|>", 2)
    assert (t.pad_token_id, t.unk_token, t.unk_token_id) == (2, "<|endoftext|>", 0)
    assert t("12")["input_ids"] == [33, 34]  # nothing added around the text
    assert t.model_max_length == 8192 and t.clean_up_tokenization_spaces is False
    assert t.apply_chat_template([{"role": "user", "content": "Hi 2"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi 2<|im_end|>\n<|im_start|>assistant\n")
