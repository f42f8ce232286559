"""LoRA Hub: in-place swappable merge, the two merge spaces, the search on a constructed objective
whose optimum is known, determinism, PEFT compatibility of the output, CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from lorasoups.errors import ConfigError
from lorasoups.io.adapters import read_adapter, write_adapter
from lorasoups.merge.linear_factors import linear_factors as factor_space_merge
from lorasoups.search.lorahub import TRACE_FILE, WEIGHTS_FILE, run_lorahub, set_weights, wrap_for_search
from lorasoups.train.loop import eval_loss
from lorasoups.train.loss import lm_loss_sum
from lorasoups.testing import base_plus_delta_logits, peft_logits
from lorasoups.types import LoraFactors

PAD = 259  # the tiny tokenizer's <pad>


def _strong_adapter(model, out, seed, r=4, modules=("v_proj", "down_proj", "lm_head"), lm_std=0.35):
    """An adapter with random factors strong enough to move the tiny model's (nearly uniform)
    output distribution: the lm_head LoRA dominates the logits."""
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in modules:
            s = lm_std if name == "lm_head" else 0.1
            mods[name] = LoraFactors(A=torch.randn(r, mod.in_features, generator=g) * s,
                                     B=torch.randn(mod.out_features, r, generator=g) * s)
    write_adapter(mods, out, base_model="tiny")
    # a non-unit scale (alpha / r), different per adapter, so merges must apply each adapter's own scale
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["lora_alpha"] = r * (2.0 if seed % 2 else 0.5)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    from lorasoups.models import load_base

    root = tmp_path_factory.mktemp("lorahub")
    model, _ = load_base(str(tiny_dir))
    a = _strong_adapter(model, root / "skill_a", seed=1)
    b = _strong_adapter(model, root / "skill_b", seed=2)
    c = _strong_adapter(model, root / "rank2", seed=3, r=2, modules=("q_proj", "v_proj"))
    # Few-shot examples sampled (temperature 1) from the base model with adapter a at weight 1, so
    # the expected cross-entropy is minimised at w = (1, 0).
    recs = [read_adapter(a), read_adapter(b)]
    wr = wrap_for_search(model, recs, "delta")
    set_weights(wr, [1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (8, 8), generator=g)
    with torch.no_grad():
        for _ in range(24):
            p = torch.softmax(model(input_ids=ids).logits[:, -1], -1)
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    exs = [{"input_ids": x, "labels": [-100] * 8 + x[8:]} for x in ids.tolist()]
    return {"root": root, "a": a, "b": b, "c": c, "examples": exs}


def _deltas(adapter_dir):
    return {m: f.delta() for m, f in read_adapter(adapter_dir).modules.items()}


def test_factor_space_one_hot_reproduces_adapter_and_mix_is_inexact(setup):
    ra, rb = read_adapter(setup["a"]), read_adapter(setup["b"])
    for m in ra.modules:
        fa, fb = ra.modules[m], rb.modules[m]
        assert fa.scale != fb.scale  # scales are folded per adapter
        assert torch.allclose(factor_space_merge([fa, fb], [1.0, 0.0]).delta(), fa.delta(), atol=1e-6)
        assert torch.allclose(factor_space_merge([fa, fb], [0.0, 1.0]).delta(), fb.delta(), atol=1e-6)
        # a real mix is not Σ w_i ΔW_i (w_i² scaling plus cross terms B_i A_j)
        mixed = factor_space_merge([fa, fb], [0.5, 0.5]).delta()
        exact = 0.5 * fa.delta() + 0.5 * fb.delta()
        assert (mixed - exact).abs().max() > 1e-3
    with pytest.raises(ValueError, match="equal ranks"):
        f2 = LoraFactors(A=torch.ones(2, 64), B=torch.ones(64, 2))
        factor_space_merge([ra.modules["model.layers.0.self_attn.v_proj"], f2], [1, 1])


def test_wrapped_model_swaps_weights_in_place(tiny_dir, setup, input_ids):
    """One wrap, many candidates: delta space equals base + Σ w_i ΔW_i; factors space with a
    one-hot weight equals the adapter loaded by vanilla PEFT."""
    from lorasoups.models import load_base

    model, _ = load_base(str(tiny_dir))
    recs = [read_adapter(setup["a"]), read_adapter(setup["b"]), read_adapter(setup["c"])]
    wr = wrap_for_search(model, recs, "delta")
    da, db, dc = _deltas(setup["a"]), _deltas(setup["b"]), _deltas(setup["c"])
    for w in ([0.7, -0.3, 1.2], [0.0, 1.0, 0.0]):
        set_weights(wr, w)
        with torch.no_grad():
            got = model(input_ids=input_ids).logits
        deltas = {}
        for d, wi in zip((da, db, dc), w):
            for m, t in d.items():
                deltas[m] = deltas.get(m, 0) + wi * t
        ref = base_plus_delta_logits(tiny_dir, deltas, input_ids)
        assert (got - ref).abs().max() < 1e-4

    model2, _ = load_base(str(tiny_dir))
    wr2 = wrap_for_search(model2, recs[:2], "factors")
    set_weights(wr2, [0.0, 1.0])
    with torch.no_grad():
        got = model2(input_ids=input_ids).logits
    ref = peft_logits(tiny_dir, setup["b"], input_ids)
    assert (got - ref).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="equal ranks"):
        wrap_for_search(load_base(str(tiny_dir))[0], recs, "factors")


def test_selective_head_loss_matches_full_logits(tiny_dir, setup):
    from lorasoups.models import load_base
    from lorasoups.train.data import collate

    model, _ = load_base(str(tiny_dir))
    b = collate(setup["examples"][:3], PAD)
    with torch.no_grad():
        s, n = lm_loss_sum(model, b)
        ref = model(**b).loss  # HF mean over label tokens
    assert n == sum(sum(1 for t in e["labels"][1:] if t != -100) for e in setup["examples"][:3])
    assert abs(float(s) / n - float(ref)) < 1e-5


def test_search_recovers_generating_adapter_and_loads_in_peft(tiny_dir, setup, input_ids):
    out = setup["root"] / "hub_delta"
    run_lorahub(str(tiny_dir), [setup["a"], setup["b"]], setup["examples"], out, budget=40, l1=0.0,
                examples=8, seed=0, progress=False)
    info = json.loads((out / WEIGHTS_FILE).read_text())
    w = np.array(info["weights"])
    # the examples were sampled from adapter a at weight 1: the optimum is near (1, 0)
    assert abs(w[0] - 1.0) < 0.2 and abs(w[1]) < 0.15, w
    # the search reached (at least) the loss of the known optimum, far below the base model's
    from lorasoups.models import load_base

    model, _ = load_base(str(tiny_dir))
    wr = wrap_for_search(model, [read_adapter(setup["a"]), read_adapter(setup["b"])], "delta")
    set_weights(wr, [1.0, 0.0])
    ce_opt = eval_loss(model, setup["examples"][:8], pad_token_id=PAD, batch_size=4)
    assert info["ce"] <= ce_opt + 0.01
    assert info["base_ce"] > ce_opt + 1.0
    trace = [json.loads(x) for x in (out / TRACE_FILE).read_text().splitlines()]
    assert len(trace) == 40 and min(t["loss"] for t in trace) == pytest.approx(info["loss"], abs=1e-9)
    # vanilla PEFT reproduces Σ w_i ΔW_i
    da, db = _deltas(setup["a"]), _deltas(setup["b"])
    ref = base_plus_delta_logits(tiny_dir, {m: w[0] * da[m] + w[1] * db[m] for m in da}, input_ids)
    got = peft_logits(tiny_dir, out, input_ids)
    assert (got - ref).abs().max() < 1e-4
    assert read_adapter(out).modules["lm_head"].r == 8  # rank-sum in delta space


def test_search_is_deterministic_for_a_seed_and_factors_space_output(tiny_dir, setup, input_ids):
    outs = []
    for k in range(2):
        out = setup["root"] / f"det{k}"
        run_lorahub(str(tiny_dir), [setup["a"], setup["b"]], setup["examples"], out, budget=12, space="factors",
                    l1=0.05, examples=4, seed=3, progress=False)
        outs.append(out)
    t0, t1 = ((o / TRACE_FILE).read_text() for o in outs)
    assert t0 == t1 and len(t0.splitlines()) == 12
    assert (outs[0] / "adapter_model.safetensors").read_bytes() == (outs[1] / "adapter_model.safetensors").read_bytes()
    info = json.loads((outs[0] / WEIGHTS_FILE).read_text())
    assert info["space"] == "factors" and info["options"]["examples"] == 4
    # the output is the original's (Σ w s B)(Σ w A), rank r, loadable by PEFT
    w = info["weights"]
    ra, rb = read_adapter(setup["a"]), read_adapter(setup["b"])
    got = read_adapter(outs[0])
    for m, f in got.modules.items():
        assert f.r == 4
        fa, fb = ra.modules[m], rb.modules[m]  # independent reference: (Σ w_i s_i B_i)(Σ w_i A_i)
        ref = (w[0] * fa.scale * fa.B + w[1] * fb.scale * fb.B) @ (w[0] * fa.A + w[1] * fb.A)
        assert torch.allclose(f.delta(), ref, atol=1e-5)
    ref = base_plus_delta_logits(tiny_dir, {m: f.delta() for m, f in got.modules.items()}, input_ids)
    assert (peft_logits(tiny_dir, outs[0], input_ids) - ref).abs().max() < 1e-4


def test_cli_with_data_file(tiny_dir, setup, capsys):
    from lorasoups.cli.main import main

    data = setup["root"] / "few.json"
    data.write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": f"number {i}"} for i in range(6)]))
    out = setup["root"] / "cli_out"
    rc = main(["lorahub", "--base", str(tiny_dir), "--adapters", str(setup["a"]), str(setup["b"]), "--data", str(data),
               "--out", str(out), "--budget", "4", "--examples", "3", "--bounds", "-1", "1", "--quiet"])
    assert rc == 0
    info = json.loads((out / WEIGHTS_FILE).read_text())
    assert info["options"]["examples"] == 3 and info["options"]["bounds"] == [-1.0, 1.0]
    assert all(-1 <= x <= 1 for x in info["weights"])
    assert "w = " in capsys.readouterr().out
    # an existing output is refused before any search, and an input is never overwritten
    assert main(["lorahub", "--base", str(tiny_dir), "--adapters", str(setup["a"]), "--data", str(data),
                 "--out", str(out), "--quiet"]) == 2
    assert main(["lorahub", "--base", str(tiny_dir), "--adapters", str(setup["a"]), "--data", str(data),
                 "--out", str(setup["a"]), "--quiet", "--overwrite"]) == 2
    assert "would overwrite input" in capsys.readouterr().err
    shutil.rmtree(out)


def test_methods_listed_with_kinds(capsys):
    from lorasoups.cli.main import main

    assert main(["ls", "methods"]) == 0
    # Continuation lines of wrapped cells start with spaces; rows start with the method name.
    table = capsys.readouterr().out.split("\n\n")[0]  # the table; each method's options follow it
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[2:]
            if line.strip() and not line.startswith(" ")}
    assert rows["lorahub"] == "search" and rows["moe"] == "routed"


def test_key_variant_gives_the_same_search(tiny_dir, setup):
    """An adapter whose tensor names lack PEFT's prefix is mapped onto the model (issue #13 item 6):
    the search and its output are those of the correctly keyed adapter."""
    import shutil

    from safetensors.torch import load_file, save_file

    b2 = shutil.copytree(setup["b"], setup["root"] / "b_noprefix")
    t = load_file(str(setup["b"] / "adapter_model.safetensors"))
    save_file({k.replace("base_model.model.", ""): v for k, v in t.items()}, str(b2 / "adapter_model.safetensors"))
    outs = []
    for k, b in enumerate([setup["b"], b2]):
        out = setup["root"] / f"variant{k}"
        run_lorahub(str(tiny_dir), [setup["a"], b], setup["examples"], out, budget=4, examples=4, seed=1,
                    progress=False)
        outs.append(out)
    assert (outs[0] / TRACE_FILE).read_text() == (outs[1] / TRACE_FILE).read_text()
    assert (outs[0] / "adapter_model.safetensors").read_bytes() == (outs[1] / "adapter_model.safetensors").read_bytes()
