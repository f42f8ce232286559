"""Silent truncation in training (issue 13, item 5): a record whose response does not fit
``cutoff_len`` after its prompt is skipped (default, replaced by another record) or kept cut, and
either way counted in the statistics, the console, ``train_info.json`` and the train log."""

from __future__ import annotations

import json

import pytest
import torch

from lorasoups.errors import ConfigError
from lorasoups.models.tiny import build_tiny_tokenizer
from lorasoups.prompts import IGNORE_INDEX, render_prompt
from lorasoups.train.data import load_training_data

CUTOFF = 64


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture
def mixed_file(tmp_path, tok):
    """20 records; every 4th has a response far too long for CUTOFF, ending in '#### n'."""
    recs = []
    for i in range(20):
        long = i % 4 == 0
        recs.append({"instruction": f"Q{i}", "output": ("x" * 80 if long else "ok") + f"\n#### {i}"})
    f = tmp_path / "mixed.json"
    f.write_text(json.dumps(recs))
    p = len(tok(render_prompt(tok, "Q10"))["input_ids"])
    assert p + len("ok\n#### 10") + 1 <= CUTOFF < p + 80  # short ones fit, long ones do not
    return f


def _ends_whole(ex, tok):
    """The example ends with the end-of-turn token, after the '#### n' line."""
    return ex["input_ids"][-1] == tok.eos_token_id and ex["labels"][-1] == tok.eos_token_id


def test_default_skips_and_replaces_long_responses(mixed_file, tok):
    # The seeded draw also hashes the file's path (a pytest temp folder, different on every
    # machine), so whether 12 of 20 records include a long one depends on the seed *and* the path
    # (none of 5 in 12 draws: 0.36 %). Every seed must refill to 12; some seed must skip.
    skipping = []
    for seed in range(10):
        t = load_training_data([f"{mixed_file}:max_samples=12"], tok, cutoff_len=CUTOFF, seed=seed)
        s = t.sources[0]
        assert s.selected == 12 and s.used == 12 and len(t.examples) == 12  # refilled from the rest
        assert s.truncated_responses == 0
        if s.skipped_long_responses >= 1:
            skipping.append((t, s))
    assert skipping
    td, st = skipping[0]
    assert st.skipped == st.skipped_long_responses
    assert all(_ends_whole(e, tok) and len(e["input_ids"]) <= CUTOFF for e in td.examples)
    assert td.cut_summary()["skipped_long_responses"] == st.skipped_long_responses
    assert "skipped (response would be cut at 64 tokens)" in td.cut_report()[0]
    # all 20 records: the 5 long ones go, nothing can replace them
    td = load_training_data([str(mixed_file)], tok, cutoff_len=CUTOFF)
    st = td.sources[0]
    assert (st.selected, st.used, st.skipped_long_responses) == (20, 15, 5)
    assert "only 15 of 20 examples" in td.cut_report()[0]


def test_keep_cuts_and_counts(mixed_file, tok):
    td = load_training_data([str(mixed_file)], tok, cutoff_len=CUTOFF, long_responses="keep")
    st = td.sources[0]
    assert (st.used, st.truncated_responses, st.skipped_long_responses) == (20, 5, 0)
    cut = [e for e in td.examples if not _ends_whole(e, tok)]
    assert len(cut) == 5 and all(len(e["input_ids"]) == CUTOFF for e in cut)
    assert "5 kept with the response cut at 64 tokens" in td.cut_report()[0]
    with pytest.raises(ConfigError, match="long_responses 'trim'"):
        load_training_data([str(mixed_file)], tok, cutoff_len=CUTOFF, long_responses="trim")


def test_nothing_cut_reports_nothing(mixed_file, tok):
    td = load_training_data([str(mixed_file)], tok, cutoff_len=512)
    assert td.cut_report() == [] and td.cut_summary() == {"skipped_long_prompts": 0, "skipped_long_responses": 0,
                                                          "truncated_responses": 0}


def test_train_lora_reports_cuts(tmp_path, tiny_dir, mixed_file, capsys):
    from lorasoups.train.sft import train_lora

    torch.set_num_threads(1)
    out = train_lora(str(tiny_dir), [str(mixed_file)], tmp_path / "a", max_steps=2, batch_size=4, cutoff_len=CUTOFF,
                     save_steps=100, progress=False)
    assert "train: data: mixed: 5 skipped (response would be cut at 64 tokens)" in capsys.readouterr().out
    info = json.loads((out / "train_info.json").read_text())
    assert info["data"][0]["skipped_long_responses"] == 5 and info["data"][0]["used"] == 15
    assert info["data_cuts"] == {"cutoff_len": CUTOFF, "long_responses": "skip", "skip_long_prompts": False,
                                 "skipped_long_prompts": 0, "skipped_long_responses": 5, "truncated_responses": 0}
    assert info["n_train_examples"] == 15
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["data"]["skipped_long_responses"] == 5
    assert first["data"]["sources"][0]["used"] == 15

    out = train_lora(str(tiny_dir), [str(mixed_file)], tmp_path / "b", max_steps=1, batch_size=4, cutoff_len=CUTOFF,
                     save_steps=100, progress=False, long_responses="keep")
    info = json.loads((out / "train_info.json").read_text())
    assert info["data_cuts"]["truncated_responses"] == 5 and info["n_train_examples"] == 20


def test_cat_records_cuts(tmp_path, tiny_dir, mixed_file, capsys):
    from lorasoups.train.cat import train_cat
    from lorasoups.train.sft import train_lora

    torch.set_num_threads(1)
    skill = tmp_path / "skill.json"
    skill.write_text(json.dumps([{"instruction": f"S{i}", "output": "yes"} for i in range(8)]))
    ads = [train_lora(str(tiny_dir), [str(skill)], tmp_path / f"ad{k}", max_steps=1, batch_size=4, cutoff_len=CUTOFF,
                      save_steps=100, progress=False, seed=k) for k in range(2)]
    capsys.readouterr()
    out = train_cat(str(tiny_dir), [str(a) for a in ads], [str(mixed_file)], tmp_path / "cat", max_steps=1, batch_size=4,
                    fraction=None, cutoff_len=CUTOFF, val_fraction=0.0)
    assert "cat: data: mixed: 5 skipped" in capsys.readouterr().out
    opts = json.loads((out / "cat_options.json").read_text())
    assert opts["data_stats"]["skipped_long_responses"] == 5 and opts["options"]["long_responses"] == "skip"
    assert opts["data_stats"]["sources"][0]["used"] == 15
