"""Training data: specs, formats, prompt masking, raw-text chunking, DATA-MIX counts, bad input."""

import json
from collections import Counter

import pytest

from lorasoups.errors import ConfigError, DataError
from lorasoups.models.tiny import build_tiny_tokenizer
from lorasoups.prompts import IGNORE_INDEX, render_prompt
from lorasoups.train.data import (DataSpec, chunk_spans, collate, load_text_pairs, load_training_data,
                                  load_training_examples, mix_counts, parse_data_spec, text_chunks, tokenize_text)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def write_records(path, recs):
    path.write_text(json.dumps(recs), encoding="utf-8")
    return path


def tagged(tmp_path, name, tag, n):
    return write_records(tmp_path / f"{name}.json",
                         [{"instruction": f"{tag} task {i}", "input": "", "output": f"{tag}{i}"} for i in range(n)])


def test_parse_data_spec():
    assert parse_data_spec("gsm8k") == DataSpec("gsm8k")
    s = parse_data_spec("gsm8k:max_samples=300,weight=0.5")
    assert (s.source, s.max_samples, s.weight, s.fraction) == ("gsm8k", 300, 0.5, None)
    assert parse_data_spec("codealpaca:fraction=0.05").fraction == 0.05
    assert parse_data_spec("dnd_manual:format=text").format == "text"
    assert parse_data_spec("/x/y.json").source == "/x/y.json"
    assert parse_data_spec("C:/odd:path.json").source == "C:/odd:path.json"  # tail is not key=value
    assert str(parse_data_spec("gsm8k:max_samples=3")) == "gsm8k:max_samples=3"
    with pytest.raises(ConfigError, match="max_sample.*did you mean 'max_samples'"):
        parse_data_spec("gsm8k:max_sample=3")
    for bad in ["gsm8k:fraction=1.5", "gsm8k:max_samples=0", "gsm8k:weight=-1", "gsm8k:format=xml", ":max_samples=2", ""]:
        with pytest.raises(ConfigError):
            parse_data_spec(bad)


def test_prompt_masked_in_labels(tmp_path, tok):
    f = write_records(tmp_path / "d.json", [{"instruction": "Add 2 and 3.", "input": "numbers", "output": "5"}])
    (ex,) = load_training_examples([str(f)], tok, cutoff_len=256)
    prompt = render_prompt(tok, "Add 2 and 3.", "numbers")
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["input_ids"][n_prompt:]) == "5" + tok.eos_token
    assert tok.decode(ex["input_ids"][:n_prompt]) == prompt
    (ex2,) = load_training_examples([str(f)], tok, cutoff_len=256, train_on_inputs=True)
    assert ex2["labels"] == ex2["input_ids"]


def test_jsonl_and_response_truncation(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"instruction": "Q", "output": "x" * 500}) for _ in range(3)) + "\n")
    exs = load_training_examples([str(f)], tok, cutoff_len=64, long_responses="keep")
    assert len(exs) == 3 and all(len(e["input_ids"]) == 64 for e in exs)
    with pytest.raises(DataError, match="no example fits the cutoff length 64 .*3 responses too long"):
        load_training_examples([str(f)], tok, cutoff_len=64)  # default: skip what would be cut
    assert load_text_pairs(str(f))[0] == ("Q", "x" * 500)
    assert load_text_pairs(str(f), tokenizer=tok)[0][0] == render_prompt(tok, "Q")


def test_chunk_spans_boundaries():
    assert chunk_spans(10, 16, 4) == [(0, 10)]
    assert chunk_spans(16, 16, 4) == [(0, 16)]
    spans = chunk_spans(100, 16, 4)
    assert spans[0][0] == 0 and spans[-1][1] == 100
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 - s0 == 16 and s1 == e0 - 4 and e1 > e0
    assert spans == [(0, 16), (12, 28), (24, 40), (36, 52), (48, 64), (60, 76), (72, 88), (84, 100)]
    assert chunk_spans(29, 16, 4) == [(0, 16), (12, 28), (24, 29)]
    with pytest.raises(ConfigError):
        chunk_spans(100, 16, 16)


def test_raw_text_chunks_cover_corpus(tmp_path, tok):
    text = "".join(f"Rule {i}: roll a d20 and add your modifier.\n" for i in range(40))
    f = tmp_path / "manual.txt"
    f.write_text(text)
    ids = tokenize_text(tok, text)
    exs = load_training_examples([str(f)], tok, cutoff_len=128, text_overlap=16, seed=3)
    assert all(e["labels"] == e["input_ids"] and len(e["input_ids"]) <= 128 for e in exs)
    chunks = text_chunks(tok, text, 128, 16)
    assert sorted(map(tuple, (e["input_ids"] for e in exs))) == sorted(tuple(c["input_ids"]) for c in chunks)
    rebuilt = list(chunks[0]["input_ids"])
    for c in chunks[1:]:
        assert c["input_ids"][:16] == rebuilt[-16:]
        rebuilt += c["input_ids"][16:]
    assert rebuilt == ids and ids[-1] == tok.eos_token_id
    assert tok.decode(rebuilt[:-1]) == text


def test_mix_weights_sample_in_proportion(tmp_path, tok):
    a, b = tagged(tmp_path, "a", "AAA", 40), tagged(tmp_path, "b", "BBB", 10)

    def count(exs):
        c = Counter()
        for e in exs:
            c[tok.decode([t for t in e["labels"] if t != IGNORE_INDEX])[:3]] += 1
        return c

    assert count(load_training_examples([str(a), str(b)], tok, cutoff_len=128)) == {"AAA": 40, "BBB": 10}
    mixed = load_training_examples([f"{a}:weight=0.5", f"{b}:weight=0.5"], tok, cutoff_len=128)
    assert count(mixed) == {"AAA": 25, "BBB": 25}
    td = load_training_data([f"{a}:weight=0.75", f"{b}:weight=0.25,max_samples=6"], tok, cutoff_len=128)
    assert count(td.examples) == {"AAA": 35, "BBB": 11}
    assert [s.in_mix for s in td.sources] == [35, 11] and [s.selected for s in td.sources] == [40, 6]
    assert count(load_training_examples([str(a), str(b)], tok, cutoff_len=128, max_samples=5)) == {"AAA": 5, "BBB": 5}
    assert count(load_training_examples([f"{a}:fraction=0.25"], tok, cutoff_len=128)) == {"AAA": 10}
    # a caller's cap (e.g. CAT's max_samples on a skill spec) and the spec's own cap: the smaller holds
    assert count(load_training_examples([f"{a}:max_samples=30", f"{b}:max_samples=8"], tok, cutoff_len=128,
                                        max_samples=9)) == {"AAA": 9, "BBB": 8}
    assert count(load_training_examples([f"{a}:max_samples=30"], tok, cutoff_len=128, fraction=0.5)) == {"AAA": 20}
    assert mix_counts([40, 10], [1, 1]) == [25, 25] and mix_counts([3, 4], [2, 1]) == [5, 2]


def test_sampling_is_seeded(tmp_path, tok):
    a = tagged(tmp_path, "a", "AAA", 30)
    x = load_training_examples([f"{a}:max_samples=10"], tok, cutoff_len=128, seed=1)
    y = load_training_examples([f"{a}:max_samples=10"], tok, cutoff_len=128, seed=1)
    z = load_training_examples([f"{a}:max_samples=10"], tok, cutoff_len=128, seed=2)
    assert x == y and x != z


def test_collate_right_pads(tok):
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [9], "labels": [9]}],
                    tok.pad_token_id)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, tok.pad_token_id, tok.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [9, -100, -100]]


@pytest.mark.parametrize("name,content,match", [
    ("empty", "[]", r"empty\.json: empty dataset"),
    ("missing", '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', r"missing\.json: record 1: missing field 'output'"),
    ("notjson", '{"instruction": "a", "output": ', r"notjson\.json: not valid JSON"),
    ("unknown", '[{"foo": 1}]', r"unknown\.json: record 0: cannot tell the record format"),
    ("null", '[{"instruction": "a", "output": null}]', r"null\.json: record 0: field 'output' is null"),
])
def test_bad_input_names_file_and_record(tmp_path, tok, name, content, match):
    f = tmp_path / f"{name}.json"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        load_training_examples([str(f)], tok, cutoff_len=128)


def test_bad_jsonl_line_and_cutoff_shorter_than_prompt(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line 2 is not valid JSON"):
        load_training_examples([str(f)], tok)
    g = write_records(tmp_path / "long.json", [{"instruction": "short", "output": "x"},
                                               {"instruction": "y" * 300, "output": "x"}])
    with pytest.raises(DataError, match=r"long\.json: record 1: prompt is \d+ tokens, not shorter than the cutoff length 64"):
        load_training_examples([str(g)], tok, cutoff_len=64)
    assert len(load_training_examples([str(g)], tok, cutoff_len=64, skip_long_prompts=True)) == 1


def test_unknown_dataset_and_missing_file(tmp_path, tok):
    with pytest.raises(DataError, match="did you mean 'gsm8k'"):
        load_training_examples(["gsm8"], tok)
    with pytest.raises(DataError, match="not found"):
        load_training_examples([str(tmp_path / "nope.json")], tok)


def _has_data():
    from lorasoups.paths import find_data_dir
    try:
        return (find_data_dir() / "gsm8k").is_dir()
    except DataError:
        return False


@pytest.mark.skipif(not _has_data(), reason="no data dir")
def test_catalogue_formats(tok):
    (q, a), = load_text_pairs("gsm8k:max_samples=1")
    assert q.endswith("?") and "<<" in a and "\n#### " in a  # worked solution kept
    (t, code), = load_text_pairs("mbpp:max_samples=1", seed=1)
    assert "def " in code and t.endswith(".")
    assert "\r\n" not in code
    (p, r), = load_text_pairs("squad_v2_dev:max_samples=1")
    assert "Context: " in p and "Question: " in p and r.startswith("the correct answer is ") and len(r) > 22
    td = load_training_data(["squad_v2_dev:max_samples=2", "codealpaca:max_samples=2", "bio_passages"], tok,
                            cutoff_len=1024, skip_long_prompts=True)
    assert [s.format for s in td.sources] == ["squad", "instruction", "text"]
    assert td.sources[0].skipped > 0  # unanswerable questions are left out
