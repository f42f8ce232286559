"""train_lora / DATA-MIX on the tiny model: learning, PEFT loading, resume, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorasoups.errors import ConfigError, DataError
from lorasoups.io.adapters import read_adapter
from lorasoups.provenance import sha256_file
from lorasoups.testing import base_plus_delta_logits, peft_logits
from lorasoups.train.sft import train_lora, work_dir_for

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = dict(batch_size=4, cutoff_len=96, learning_rate=5e-3, warmup_steps=2, progress=False)


@pytest.fixture
def skill_file(tmp_path):
    recs = [{"instruction": f"Name colour {i % 4}.", "input": "", "output": ["RED!", "BLUE!", "GREEN!", "GOLD!"][i % 4]}
            for i in range(32)]
    f = tmp_path / "colours.json"
    f.write_text(json.dumps(recs))
    return f


def leftovers(parent: Path, out: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}"))


def test_30_steps_lower_loss_and_folder_loads_in_peft(tmp_path, tiny_dir, skill_file):
    out = tmp_path / "skill"
    train_lora(str(tiny_dir), [str(skill_file)], out, max_steps=30, save_steps=100, val_fraction=0.25, **FAST)
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    log = [x for x in lines if "loss" in x]
    assert lines[0]["step"] == 0 and lines[0]["data"]["skipped_long_responses"] == 0  # the data record
    assert [x for x in lines[1:] if "loss" not in x] == [{"step": 30, "val_loss": lines[-1]["val_loss"]}]
    assert [x["step"] for x in log] == list(range(1, 31))
    assert all(x["tokens_per_s"] > 0 and "lr" in x for x in log)
    first, last = sum(x["loss"] for x in log[:5]) / 5, sum(x["loss"] for x in log[-5:]) / 5
    assert last < first - 0.3, (first, last)  # observed: 5.40 -> 4.69
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 30 and info["data"][0]["sha256"] == sha256_file(skill_file)
    assert info["options"]["r"] == 8 and info["precision"]["resolved"] in ("bf16", "fp32")
    assert info["provenance"]["package_versions"]["peft"] != "absent" and info["wall_time_s"] > 0
    assert (info["n_train_examples"], info["n_val_examples"]) == (24, 8) and 0 < info["val_loss"] < 20
    assert leftovers(tmp_path, out) == []  # work dir removed after success
    # vanilla PEFT loads it, and its logits are base + the saved ΔW (non-zero after training)
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    rec = read_adapter(out)
    assert len(rec.modules) == 2 * 7 and max(float(f.delta().abs().max()) for f in rec.modules.values()) > 1e-4
    got = peft_logits(tiny_dir, out, ids)
    want = base_plus_delta_logits(tiny_dir, {m: f.delta() for m, f in rec.modules.items()}, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - peft_logits(tiny_dir, None, ids)).abs().max() > 1e-3
    with pytest.raises(FileExistsError):
        train_lora(str(tiny_dir), [str(skill_file)], out, max_steps=1, **FAST)


class Kill:
    """Trainer callback that aborts the run at a given step, as a kill would."""

    def __init__(self, step):
        from transformers import TrainerCallback

        class _K(TrainerCallback):
            def on_step_end(self_, args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"killed at step {step}")

        self.cb = _K()


def test_resume_matches_uninterrupted_run(tmp_path, tiny_dir, skill_file):
    opts = dict(max_steps=10, save_steps=4, precision="fp32", lora_dropout=0.1, **FAST)
    full = train_lora(str(tiny_dir), [str(skill_file)], tmp_path / "full", **opts)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_dir), [str(skill_file)], out, callbacks=[Kill(6).cb], **opts)
    assert not out.exists()
    work = work_dir_for(out)
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-4"]
    with pytest.raises(ConfigError, match="options differ.*learning_rate"):
        train_lora(str(tiny_dir), [str(skill_file)], out, resume=True, **{**opts, "learning_rate": 1e-3})
    train_lora(str(tiny_dir), [str(skill_file)], out, resume=True, **opts)
    info = json.loads((out / "train_info.json").read_text())
    assert info["resumed_from_step"] == 4 and info["steps"] == 10
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == list(range(0, 11))
    a, b = read_adapter(full), read_adapter(out)
    assert a.modules.keys() == b.modules.keys()
    # Tolerance: same seed, fp32, same batches and RNG state after resume -> equal up to float
    # reassociation; we allow 1e-5 relative to the largest |ΔW| entry.
    for m in a.modules:
        da, db = a.modules[m].delta(), b.modules[m].delta()
        assert (da - db).abs().max() <= 1e-5 * da.abs().max() + 1e-8, m
    # and a different seed gives a different adapter (the comparison can fail)
    other = train_lora(str(tiny_dir), [str(skill_file)], tmp_path / "seed1", **{**opts, "seed": 1})
    m0 = next(iter(a.modules))
    assert (read_adapter(other).modules[m0].delta() - a.modules[m0].delta()).abs().max() > 1e-4


def test_two_process_ddp_saves_one_adapter(tmp_path, tiny_dir, skill_file):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORASOUPS_HOME": os.environ["LORASOUPS_HOME"]}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lorasoups.cli.main", "train", "--base", str(tiny_dir), "--data", str(skill_file), "--out", str(out),
           "--max-steps", "3", "--batch-size", "2", "--cutoff-len", "96", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its two workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("saved ") == 1
    info = json.loads((out / "train_info.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 3
    # 32 examples, 2 processes x 2 per step -> 8 steps per epoch: each rank saw different data
    assert abs(json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["epoch"] - 3 / 8) < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours.json", "ddp"]
    assert len(read_adapter(out).modules) == 14


@pytest.mark.parametrize("content,match", [
    ('[]', r"bad\.json: empty dataset"),
    ('[{"instruction": "a"}]', r"bad\.json: record 0: missing field 'output'"),
    ('not json at all', r"bad\.json: not valid JSON"),
    (json.dumps([{"instruction": "x" * 200, "output": "y"}]), r"bad\.json: record 0: prompt is \d+ tokens"),
])
def test_bad_input_clear_error_no_output(tmp_path, tiny_dir, content, match):
    f = tmp_path / "bad.json"
    f.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        train_lora(str(tiny_dir), [str(f)], out, max_steps=2, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_cli_bad_input_and_option(tmp_path, tiny_dir, capsys):
    from lorasoups.cli.main import main

    f = tmp_path / "bad.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"question": 1}\n')
    rc = main(["train", "--base", str(tiny_dir), "--data", str(f), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl: record 1: missing field 'instruction'" in err
    rc = main(["train", "--base", str(tiny_dir), "--data", str(f), "--out", str(tmp_path / "o"), "--precision", "fp16"])
    assert rc == 2 and "fp16 needs a GPU" in capsys.readouterr().err or torch.cuda.is_available()
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        train_lora(str(tiny_dir), [str(f)], tmp_path / "o", learning_rat=1.0)
    g = tmp_path / "ok.json"
    g.write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    with pytest.raises(ConfigError, match="target modules"):
        train_lora(str(tiny_dir), [str(g)], tmp_path / "o", target_modules=["nope_proj"], max_steps=1, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "ok.json"]


def test_data_mix_registered():
    from lorasoups.methods import load_methods

    info = load_methods().get("data_mix")
    assert info.kind == "trained" and info.space == "model"
    assert info.params["r"] == 8 and "weights" in info.params and "learning_rate" in info.params


def test_group_by_length_same_examples_less_padding_deterministic(tmp_path, tiny_dir, monkeypatch):
    """One epoch of length-grouped batches covers exactly the examples of one epoch of random batches,
    with less padding, in the same order for the same seed; the option is recorded. (128 examples:
    transformers groups by length within mega-batches of a quarter of the data at most.)"""
    import lorasoups.train.data as data_mod

    recs = [{"instruction": f"Item {i}: " + "word " * (1 + (i * 7) % 13), "input": "", "output": f"ok {i}"}
            for i in range(128)]
    f = tmp_path / "varied.json"
    f.write_text(json.dumps(recs))
    real_collate = data_mod.collate

    def run(name, **kw):
        seen = []

        def spy(batch, pad_id):
            out = real_collate(batch, pad_id)
            seen.append([tuple(e["input_ids"]) for e in batch])
            return out

        monkeypatch.setattr(data_mod, "collate", spy)
        out = train_lora(str(tiny_dir), [str(f)], tmp_path / name, epochs=1, save_steps=100, **{**FAST, "batch_size": 8, "cutoff_len": 160, **kw})
        monkeypatch.setattr(data_mod, "collate", real_collate)
        return seen, json.loads((out / "train_info.json").read_text())

    def padding(batches):
        return sum(max(map(len, b)) * len(b) - sum(map(len, b)) for b in batches)

    grouped, info = run("g")
    assert info["options"]["group_by_length"] is True and info["steps"] == 16
    again, _ = run("g2")
    rand, info_r = run("r", group_by_length=False)
    assert info_r["options"]["group_by_length"] is False and info_r["steps"] == 16
    assert again == grouped  # seeded: same batches in the same order
    assert sorted(x for b in grouped for x in b) == sorted(x for b in rand for x in b)  # same examples
    assert len({x for b in grouped for x in b}) == 128 and all(len(b) == 8 for b in grouped)
    assert padding(grouped) < padding(rand) / 2, (padding(grouped), padding(rand))
    other, _ = run("g_seed1", seed=1)
    assert other != grouped and sorted(x for b in other for x in b) == sorted(x for b in grouped for x in b)
    with pytest.raises(ConfigError, match="group_by_length: input should be a valid boolean"):
        train_lora(str(tiny_dir), [str(f)], tmp_path / "bad", group_by_length="yes", max_steps=1, **FAST)


@pytest.mark.parametrize("precision,expect", [("bf16", True), ("fp32", False)])
def test_loss_runs_under_the_resolved_autocast(tmp_path, tiny_dir, skill_file, monkeypatch, precision, expect):
    """The training loss (which calls the decoder and head directly, not model.forward) runs inside
    the Trainer's autocast region when bf16 is resolved, and outside any when fp32 is: the
    recorded precision is the precision the matmuls actually used."""
    import lorasoups.train.loss as loss_mod

    real, seen = loss_mod.lm_loss_sum, []

    def spy(model, batch, *a, **k):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(model, batch, *a, **k)

    monkeypatch.setattr(loss_mod, "lm_loss_sum", spy)
    out = train_lora(str(tiny_dir), [str(skill_file)], tmp_path / "o", max_steps=2, save_steps=100,
                     precision=precision, **FAST)
    info = json.loads((out / "train_info.json").read_text())
    assert info["precision"]["resolved"] == precision
    assert len(seen) == 2 and all(on is expect for on, _ in seen), seen
    if expect:
        assert all(dt == torch.bfloat16 for _, dt in seen)
