"""Restated raw text (``shuffled_copies``): every copy is a reordering of each document's
sentences, nothing added, changed or lost; seeded; refused on records and for bad values."""

import json
from collections import Counter

import pytest

from lorasoups.errors import ConfigError, DataError
from lorasoups.models.tiny import build_tiny_tokenizer
from lorasoups.train.data import load_source, load_training_data, parse_data_spec, tokenize_text
from lorasoups.train.restate import shuffled_copies, split_documents, split_sentences

DOC1 = ("D. Membrane Fluidity\n1. Chemical Factors\nHeat makes membranes more fluid. Cholesterol fills the "
        "space between fatty acids (e.g. in animal cells). Kinks push \"tails\" apart! Why? Space.")
DOC2 = "The dragon breathes fire. It sleeps for 3 days. Nobody wakes it."
TEXT = DOC1 + "\n\n" + DOC2 + "\n"


def test_split_sentences_keeps_every_character_but_the_separators():
    s = split_sentences(DOC1)
    assert s[:2] == ["D. Membrane Fluidity", "1. Chemical Factors"]  # enumerators stay with their heading
    assert "Cholesterol fills the space between fatty acids (e.g. in animal cells)." in s
    assert s[-3:] == ["Kinks push \"tails\" apart!", "Why?", "Space."]
    assert "".join(s).replace(" ", "") == DOC1.replace(" ", "").replace("\n", "")


def test_copies_are_permutations_of_each_document():
    out = shuffled_copies(TEXT, 3, seed=0)
    docs = split_documents(out)
    assert len(docs) == 2 * 4
    assert out.startswith(TEXT.strip())  # copy 0 is the text unchanged
    for k in range(4):
        for j, orig in enumerate((DOC1, DOC2)):
            assert Counter(split_sentences(docs[2 * k + j])) == Counter(split_sentences(orig))
    # at least one copy differs from the original order (6+ sentences: 1/720 per copy to stay put)
    assert any(split_sentences(docs[2 * k]) != split_sentences(DOC1) for k in (1, 2, 3))


def test_copies_are_seeded():
    assert shuffled_copies(TEXT, 2, seed=5) == shuffled_copies(TEXT, 2, seed=5)
    assert shuffled_copies(TEXT, 2, seed=5) != shuffled_copies(TEXT, 2, seed=6)
    assert shuffled_copies(TEXT, 0) == TEXT
    with pytest.raises(ValueError, match="shuffled_copies"):
        shuffled_copies(TEXT, -1)


def test_spec_key_parsed_and_checked():
    assert parse_data_spec("game.txt:shuffled_copies=4").shuffled_copies == 4
    assert str(parse_data_spec("m.txt:format=text,shuffled_copies=2")) == "m.txt:format=text,shuffled_copies=2"
    for bad in ("m.txt:shuffled_copies=0", "m.txt:shuffled_copies=two"):
        with pytest.raises(ConfigError, match="shuffled_copies"):
            parse_data_spec(bad)


def test_training_data_holds_the_copies(tmp_path):
    tok = build_tiny_tokenizer()
    f = tmp_path / "manual.txt"
    f.write_text(TEXT)
    plain = load_training_data([str(f)], tok, cutoff_len=4096)
    tripled = load_training_data([f"{f}:shuffled_copies=2"], tok, cutoff_len=4096)
    (e1,), (e3,) = plain.examples, tripled.examples
    assert tok.decode(e3["input_ids"]).count("Cholesterol fills the space") == 3
    n_plain = len(tokenize_text(tok, TEXT))
    assert 2.5 * n_plain < len(e3["input_ids"]) < 3.5 * n_plain
    assert load_source(f"{f}:shuffled_copies=2").text == shuffled_copies(TEXT, 2)


def test_refused_on_records(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    with pytest.raises(DataError, match=r"r\.json.*shuffled_copies applies to raw text"):
        load_source(f"{f}:shuffled_copies=2")
