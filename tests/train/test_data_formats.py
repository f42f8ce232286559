"""Training data formats beyond instruction records: prompt/completion, chat messages (loss on the
last assistant turn), CSV/TSV/Parquet files, field mapping in the data spec; a few training steps each."""

import json

import pytest

from lorasoups.errors import ConfigError, DataError
from lorasoups.models.tiny import build_tiny_tokenizer
from lorasoups.prompts import IGNORE_INDEX, render_prompt
from lorasoups.train.data import DataSpec, load_source, load_training_examples, parse_data_spec, render_messages

CHAT = [{"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Colour of grass?"},
                      {"role": "assistant", "content": "Green"}]}]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _response(tok, ex):
    ids = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    return tok.decode(ids)


def test_prompt_completion_records(tmp_path, tok):
    f = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "Add 2 and 3.", "completion": "5"}])
    src = load_source(str(f))
    assert src.format == "prompt_completion"
    (ex,) = load_training_examples([str(f)], tok, cutoff_len=128)
    prompt = render_prompt(tok, "Add 2 and 3.")
    assert tok.decode(ex["input_ids"]).startswith(prompt)
    assert _response(tok, ex) == "5" + tok.eos_token


def test_messages_loss_on_last_assistant_turn_only(tmp_path, tok):
    f = _jsonl(tmp_path / "chat.jsonl", CHAT)
    assert load_source(str(f)).format == "messages"
    (ex,) = load_training_examples([str(f)], tok, cutoff_len=256)
    text = tok.decode(ex["input_ids"])
    assert "Be brief." in text and "Hello" in text and "Colour of grass?" in text
    assert _response(tok, ex) == "Green" + tok.eos_token  # "Hello" (an earlier turn) carries no loss
    prompt = render_messages(tok, CHAT[0]["messages"])
    if tok.chat_template:
        assert prompt == tok.apply_chat_template(CHAT[0]["messages"][:-1], tokenize=False, add_generation_prompt=True)


def test_messages_without_chat_template(tok):
    import copy

    t2 = copy.deepcopy(tok)
    t2.chat_template = None
    p = render_messages(t2, CHAT[0]["messages"])
    assert p.endswith(render_prompt(t2, "Colour of grass?", style="alpaca")) and "Hello" in p


@pytest.mark.parametrize("recs,match", [
    ([{"messages": []}], "field .messages. must be a non-empty list"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "user turn followed by an assistant turn"),
    ([{"messages": [{"role": "bot", "content": "hi"}]}], r"messages\[0\] must be an object with a role"),
])
def test_bad_messages_name_file_and_record(tmp_path, tok, recs, match):
    f = _jsonl(tmp_path / "bad.jsonl", recs)
    with pytest.raises(DataError, match=r"bad\.jsonl: record 0: .*" + match):
        load_training_examples([str(f)], tok, cutoff_len=128)


def test_field_mapping_in_spec(tmp_path, tok):
    s = parse_data_spec("my.csv:prompt=question,completion=label,max_samples=2")
    assert s.fields == (("prompt", "question"), ("completion", "label")) and s.max_samples == 2
    assert str(s) == "my.csv:max_samples=2,prompt=question,completion=label"
    with pytest.raises(ConfigError, match="field mapping FIELD=COLUMN"):
        parse_data_spec("my.csv:promt=question")
    f = _jsonl(tmp_path / "m.jsonl", [{"q": "Name a fruit.", "a": "apple"}])
    with pytest.raises(DataError, match="cannot tell the record format"):
        load_source(str(f))
    (ex,) = load_training_examples([f"{f}:prompt=q,completion=a"], tok, cutoff_len=128)
    assert _response(tok, ex) == "apple" + tok.eos_token
    with pytest.raises(DataError, match=r"m\.jsonl: record 0: field map prompt=question, but the record has no"):
        load_source(f"{f}:prompt=question,completion=a")
    # instruction/output records mapped from other names, with format given
    (ex,) = load_training_examples([DataSpec(str(f), format="instruction", fields=(("instruction", "q"), ("output", "a")))],
                                   tok, cutoff_len=128)
    assert _response(tok, ex) == "apple" + tok.eos_token


def test_csv_tsv_and_parquet(tmp_path, tok):
    csv = tmp_path / "d.csv"
    csv.write_text('instruction,input,output\n"Say hi, politely",,Hello there\nCount,1 2,3\n')
    src = load_source(str(csv))
    assert src.format == "instruction" and [e.output for e in src.examples] == ["Hello there", "3"]
    assert src.examples[0].instruction == "Say hi, politely" and src.examples[0].input == ""
    tsv = tmp_path / "d.tsv"
    tsv.write_text("prompt\tcompletion\nA\t007\n")
    assert load_source(str(tsv)).examples[0].output == "007"  # cells stay strings
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(CHAT * 2 + [dict(CHAT[0])]), p)
    src = load_source(str(p))
    assert src.format == "messages" and len(src.examples) == 3 and src.examples[0].output == "Green"


def test_each_format_trains(tmp_path, tiny_dir, one_thread):
    """A few optimizer steps on the tiny model from prompt/completion JSONL, chat messages, CSV and Parquet."""
    from lorasoups.io.adapters import read_adapter
    from lorasoups.train.sft import train_lora

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    colours = ["RED", "BLUE", "GREEN", "GOLD"]
    pc = _jsonl(tmp_path / "pc.jsonl", [{"prompt": f"Colour {i % 4}?", "completion": colours[i % 4]} for i in range(8)])
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"Colour {i % 4}?"},
                                                          {"role": "assistant", "content": colours[i % 4]}]}
                                            for i in range(8)])
    csv = tmp_path / "c.csv"
    csv.write_text("q,a\n" + "".join(f"Colour {i % 4}?,{colours[i % 4]}\n" for i in range(8)))
    par = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": f"Colour {i % 4}?", "output": colours[i % 4]} for i in range(8)]),
                   par)
    for name, spec in [("pc", str(pc)), ("chat", str(chat)), ("csv", f"{csv}:prompt=q,completion=a"),
                       ("parquet", str(par))]:
        out = tmp_path / f"out_{name}"
        train_lora(str(tiny_dir), [spec], out, max_steps=2, save_steps=100, batch_size=4, cutoff_len=64,
                   learning_rate=5e-3, warmup_steps=0, progress=False)
        ad = read_adapter(out)
        # lora_B starts at zero: two steps moved it
        assert ad.modules and any(float(f.B.abs().sum()) > 0 for f in ad.modules.values()), name
