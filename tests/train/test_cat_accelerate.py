"""CAT under ``accelerate launch --num_processes 2`` (CPU, gloo): the same global batch gives the same
coefficients as one process, and one output folder is written; with the pooled and the balanced mix."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from lorasoups.testing import make_peft_adapter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(path, n=24):
    words = ["red", "green", "blue", "amber", "violet", "teal", "olive", "coral"]
    recs = [{"instruction": f"Name colour {i} of the list {' '.join(words[i % 8:] + words[:i % 8])}.",
             "input": "", "output": f"{words[(3 * i) % 8]} " * (1 + i % 5)} for i in range(n)]
    path.write_text(json.dumps(recs))
    return path


def _cat(cmd_prefix, tiny_dir, adapters, data, out, batch_size, env, extra=()):
    data = data if isinstance(data, list) else [data]
    cmd = [*cmd_prefix, "-m", "lorasoups.cli.main", "cat", "--base", str(tiny_dir), "--adapters", *map(str, adapters),
           "--data", *map(str, data), *extra, "--out", str(out), "--fraction", "1", "--val-fraction", "0", "--max-steps", "3",
           "--batch-size", str(batch_size), "--grad-accum", "2", "--learning-rate", "0.3", "--precision", "fp32",
           "--device", "cpu", "--init", "random", "--seed", "4", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _logits(out):
    doc = json.loads((out / "cat_coefficients.json").read_text())
    return {g: v["logits_final"] for g, v in doc["groups"].items()}


@pytest.mark.parametrize("mix", ["pooled", "balanced"])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, tiny_dir, mix):
    a = make_peft_adapter(tiny_dir, tmp_path / "a", r=4, seed=1, std=0.1)
    b = make_peft_adapter(tiny_dir, tmp_path / "b", r=2, seed=2, std=0.1, target_modules=("q_proj", "down_proj"))
    data = _records(tmp_path / "colours.json")
    extra = ()
    if mix == "balanced":  # two skills of very different sizes; the weights normalise over the global batch
        data = [data, _records(tmp_path / "few.json", 6)]
        extra = ("--mix", "balanced")
    # --multi_gpu on a machine without GPUs: torchrun-style launch of 2 CPU processes with gloo
    # (accelerate's --cpu with several processes needs mpirun)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "LORASOUPS_HOME": os.environ["LORASOUPS_HOME"]}
    one = tmp_path / "one"
    _cat([sys.executable], tiny_dir, [a, b], data, one, 4, env, extra)
    two = tmp_path / "two"
    stdout = _cat([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port())], tiny_dir, [a, b], data, two, 2, env, extra)
    assert stdout.count("wrote ") == 1  # one process writes
    assert json.loads((two / "cat_options.json").read_text())["resolved"]["world_size"] == 2
    l1, l2 = _logits(one), _logits(two)
    assert l1.keys() == l2.keys()
    init = json.loads((one / "cat_coefficients.json").read_text())["groups"]
    moved = max(abs(x - y) for g in l1 for x, y in zip(l1[g], init[g]["logits_initial"]))
    assert moved > 1e-2  # the coefficients trained
    diff = max(abs(x - y) for g in l1 for x, y in zip(l1[g], l2[g]))
    print(f"max |logit(1 process, batch 4) - logit(2 processes x batch 2)| = {diff:.2e}")
    assert diff <= 1e-5
    log1 = [json.loads(x)["loss"] for x in (one / "cat_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x)["loss"] for x in (two / "cat_log.jsonl").read_text().splitlines()]
    assert log1[0] is None and all(abs(x - y) < 1e-5 for x, y in zip(log1[1:], log2[1:]))
