"""The two controls of a CAT result (Liu et al. 2026, arXiv 2602.12323): random-like LoRAs (shapes,
scales and per-module norms of the originals, Gaussian directions) and CAT over them (``cat_random``);
a fresh LoRA trained on exactly CAT's examples for exactly CAT's steps (``lora_cat_data``), and how
config validation links it to its CAT row."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lorasoups.io.adapters import read_adapter
from lorasoups.testing import make_peft_adapter
from lorasoups.train.random_like import (adapter_seed, compare, delta_inner, delta_sq_norm, random_like,
                                         random_like_adapters)

ADAPTERS = [
    dict(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")),
    dict(r=2, lora_alpha=16, use_rslora=True, target_modules=("q_proj", "k_proj", "o_proj", "down_proj"),
         rank_pattern={"layers.1.self_attn.q_proj": 3}),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("control_adapters")
    return [make_peft_adapter(tiny_dir, d / f"a{i}", seed=20 + i, std=0.1, **kw) for i, kw in enumerate(ADAPTERS)]


def fro(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.double()))


def product(f) -> torch.Tensor:
    """ΔW = s·B·A formed explicitly in float64 (the independent reference)."""
    return f.scale * (f.B.double() @ f.A.double())


# ----------------------------------------------------------------------------- random-like LoRAs

def test_trace_identities_match_explicit_products():
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(7, 3, generator=g), torch.randn(3, 11, generator=g)
    B2, A2 = torch.randn(7, 5, generator=g), torch.randn(5, 11, generator=g)
    assert delta_sq_norm(B, A) == pytest.approx(fro(B.double() @ A.double()) ** 2, rel=1e-9)
    assert delta_inner(B, A, B2, A2) == pytest.approx(float(((B.double() @ A.double()) * (B2.double() @ A2.double())).sum()),
                                                      rel=1e-9)


@pytest.mark.parametrize("i", [0, 1])
def test_random_like_keeps_shapes_scales_config_and_delta_norms(adapters, i):
    rec = read_adapter(adapters[i])
    rnd = random_like(rec, seed=7)
    assert set(rnd.modules) == set(rec.modules) and rnd.config == rec.config and rnd.base_model == rec.base_model
    cos = []
    for m, f in rec.modules.items():
        g = rnd.modules[m]
        assert g.A.shape == f.A.shape and g.B.shape == f.B.shape and g.A.dtype == f.A.dtype and g.scale == f.scale
        d0, d1 = product(f), product(g)
        assert fro(d1) == pytest.approx(fro(d0), rel=1e-5)  # the update size the model sees
        assert fro(g.A) == pytest.approx(fro(f.A), rel=1e-5)
        assert not torch.allclose(g.A, f.A) and not torch.allclose(d1, d0)
        cos.append(abs(float((d0 * d1).sum())) / (fro(d0) * fro(d1)))
    # Gaussian directions: nearly orthogonal to the original ΔW (adapter 0 observed: mean |cos| 0.015, max 0.049)
    assert sum(cos) / len(cos) < 0.1 and max(cos) < 0.3, cos
    rep = compare(rec, rnd)
    assert rep["max_rel_delta_norm_mismatch"] < 1e-5 and rep["modules"] == len(rec.modules)
    assert rep["abs_cosine_mean"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
    want = math.sqrt(sum(fro(product(f)) ** 2 for f in rec.modules.values()))
    assert rep["delta_norm"][0] == pytest.approx(want, rel=1e-5) and rep["delta_norm"][1] == pytest.approx(want, rel=1e-5)


def test_factors_norm_matches_A_and_B_not_the_product():
    """``factors`` matches ||A|| and ||B|| but not ||ΔW||: for factors whose rank-r terms line up (as
    training makes them; here all rank-1 terms equal u vᵀ, so ||BA|| = ||A||·||B||) a random product is
    about 1/sqrt(r) of that. ``delta`` matches ||ΔW||, which is why it is the default."""
    from lorasoups.types import AdapterRecord, LoraFactors

    g = torch.Generator().manual_seed(1)
    mods = {}
    for k in range(3):
        u, v = torch.randn(48, generator=g), torch.randn(40, generator=g)
        mods[f"model.layers.{k}.mlp.up_proj"] = LoraFactors(A=v.repeat(8, 1), B=u[:, None].repeat(1, 8), scale=0.5)
    rec = AdapterRecord(modules=mods)
    rnd = random_like(rec, seed=7, norm="factors")
    dl = random_like(rec, seed=7, norm="delta")
    for m, f in rec.modules.items():
        x, y = rnd.modules[m], dl.modules[m]
        assert fro(product(f)) == pytest.approx(f.scale * fro(f.A) * fro(f.B), rel=1e-5)
        assert fro(x.A) == pytest.approx(fro(f.A), rel=1e-5) and fro(x.B) == pytest.approx(fro(f.B), rel=1e-5)
        assert fro(product(x)) < 0.6 * fro(product(f))  # observed ≈ 1/sqrt(8) of it
        assert fro(product(y)) == pytest.approx(fro(product(f)), rel=1e-5)
        # the same draw as norm="delta": the same A, and B differs only by its scale
        torch.testing.assert_close(x.A, y.A)
        c = x.B.flatten() @ y.B.flatten() / (fro(x.B) * fro(y.B))
        assert float(c) == pytest.approx(1.0, abs=1e-5)


def test_seeds_reproducible_per_adapter_and_per_module(adapters):
    rec = read_adapter(adapters[0])
    a, b, c = random_like(rec, seed=3), random_like(rec, seed=3), random_like(rec, seed=4)
    for m in rec.modules:
        assert torch.equal(a.modules[m].A, b.modules[m].A) and torch.equal(a.modules[m].B, b.modules[m].B)
        assert not torch.allclose(a.modules[m].A, c.modules[m].A)
    # a module's draw depends on (seed, module) only, not on the other modules
    m0 = sorted(rec.modules)[3]
    alone = type(rec)(modules={m0: rec.modules[m0]}, config=rec.config)
    assert torch.equal(random_like(alone, seed=3).modules[m0].B, a.modules[m0].B)
    # two copies of the same adapter in one list get different draws (a seed per adapter)
    x, y = random_like_adapters([rec, rec], seed=3)
    assert adapter_seed(3, 0) != adapter_seed(3, 1)
    assert all(not torch.allclose(x.modules[m].A, y.modules[m].A) for m in rec.modules)
    assert torch.equal(x.modules[m0].A, random_like(rec, seed=adapter_seed(3, 0)).modules[m0].A)


def test_zero_update_stays_zero_and_bad_norm_refused(adapters):
    from lorasoups.types import LoraFactors
    from lorasoups.train.random_like import random_like_factors

    f = LoraFactors(A=torch.randn(2, 8), B=torch.zeros(5, 2), scale=2.0)  # a fresh LoRA: B = 0
    g = random_like_factors(f, torch.Generator().manual_seed(0))
    assert fro(g.B) == 0 and fro(g.A) == pytest.approx(fro(f.A), rel=1e-6)
    with pytest.raises(ValueError, match="norm must be one of delta, factors"):
        random_like_factors(f, torch.Generator().manual_seed(0), "spectral")


# ----------------------------------------------------------------------------- cat_random

def synthetic_examples(n=16, length=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 256, (int(torch.randint(6, length + 1, (1,), generator=g)),), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return out


def test_cat_random_exports_the_concat_of_the_random_like_loras(tiny_dir, adapters, tmp_path):
    from lorasoups.train.controls import cat_random

    out = cat_random(str(tiny_dir), adapters, synthetic_examples(), tmp_path / "cr", seed=5, learning_rate=0.2,
                     max_steps=3, batch_size=4, precision="fp32", device="cpu", val_fraction=0.0, random_seed=11)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cr"]  # atomic: no temp folder left
    doc = json.loads((out / "cat_coefficients.json").read_text())
    rl = json.loads((out / "random_like.json").read_text())
    assert rl["random_seed"] == 11 and rl["norm"] == "delta"
    assert [a["seed"] for a in rl["adapters"]] == [adapter_seed(11, 0), adapter_seed(11, 1)]
    assert all(a["max_rel_delta_norm_mismatch"] < 1e-5 and a["abs_cosine_mean"] < 0.15 for a in rl["adapters"])
    assert rl["adapters"][0]["source"] == str(adapters[0]) and "provenance" in rl
    moved = max(abs(a - b) for v in doc["groups"].values() for a, b in zip(v["logits_final"], v["logits_initial"]))
    assert moved > 0.05  # the coefficients trained
    randoms = random_like_adapters([read_adapter(a) for a in adapters], seed=11)
    exported = read_adapter(out)
    assert set(exported.modules) == set().union(*(r.modules for r in randoms))
    originals = [read_adapter(a) for a in adapters]
    for m, f in exported.modules.items():
        want = torch.zeros(f.d_out, f.d_in, dtype=torch.float64)
        real = torch.zeros_like(want)
        for r, o in zip(randoms, originals):
            if m in r.modules:
                c = doc["modules"][m][r.name]["final"]
                want += c * product(r.modules[m])
                real += c * product(o.modules[m])
        got = product(f)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert (got - real).abs().max() > 1e-3  # not the concat of the trained LoRAs


# ----------------------------------------------------------------------------- lora_cat_data

@pytest.fixture
def skill_files(tmp_path):
    out = []
    for tag, words in (("colour", ["RED!", "BLUE!", "GREEN!", "GOLD!"]), ("shape", ["ROUND", "SQUARE", "FLAT"])):
        recs = [{"instruction": f"Name {tag} {i}.", "input": "", "output": words[i % len(words)]} for i in range(40)]
        f = tmp_path / f"{tag}.json"
        f.write_text(json.dumps(recs))
        out.append(str(f))
    return out


CAT_OPTS = dict(fraction=0.5, batch_size=4, grad_accum=1, epochs=2.0, val_fraction=0.25, cutoff_len=64,
                learning_rate=0.1, precision="fp32", seed=3)


def test_lora_cat_data_trains_on_cats_examples_for_cats_steps(tiny_dir, adapters, skill_files, tmp_path, monkeypatch):
    import lorasoups.train.cat as cat_mod
    import lorasoups.train.sft as sft
    from lorasoups.train.controls import lora_cat_data

    seen: dict = {}
    fit = cat_mod.fit_coefficients

    def spy_fit(model, handle, train, **kw):
        seen["cat"] = [(tuple(e["input_ids"]), tuple(e["labels"])) for e in train]
        return fit(model, handle, train, **kw)

    train_lora = sft.train_lora

    def spy_train(base, data, out, *, prepared=None, **kw):
        seen["lora"] = [(tuple(e["input_ids"]), tuple(e["labels"])) for e in prepared[1]]
        seen["lora_kw"] = kw
        return train_lora(base, data, out, prepared=prepared, **kw)

    monkeypatch.setattr(cat_mod, "fit_coefficients", spy_fit)
    monkeypatch.setattr(sft, "train_lora", spy_train)
    opts = dict(CAT_OPTS)
    seed = opts.pop("seed")
    cat_out = cat_mod.train_cat(str(tiny_dir), adapters, skill_files, tmp_path / "cat", seed=seed, device="cpu", **opts)
    ctl = lora_cat_data(str(tiny_dir), [], skill_files, tmp_path / "ctl", seed=99, device="cpu", progress=False,
                        r=2, lora_alpha=4, learning_rate=5e-3, warmup_steps=0, save_steps=1000, max_steps=500,
                        batch_size=32, cat_options=CAT_OPTS)  # max_steps / batch_size here are not used: CAT's are
    cat_info = json.loads((cat_out / "cat_options.json").read_text())
    info = json.loads((ctl / "train_info.json").read_text())
    # exactly CAT's training examples (token ids and labels), none of its held-out ones
    assert sorted(seen["lora"]) == sorted(seen["cat"]) and len(seen["cat"]) == cat_info["resolved"]["train_examples"]
    assert info["control"]["train_examples_sha256"] == cat_info["resolved"]["train_examples_sha256"]
    assert info["n_train_examples"] == len(seen["cat"]) and info["control"]["val_examples"] == cat_info["resolved"]["val_examples"]
    # exactly CAT's optimiser steps of CAT's batch size: 2 epochs of ceil(30 / 4) batches = 16
    steps = cat_info["resolved"]["steps"]
    assert steps == 16 and info["steps"] == steps and info["control"]["steps"] == steps
    assert len([x for x in (cat_out / "cat_log.jsonl").read_text().splitlines() if json.loads(x)["step"]]) == steps
    assert info["options"]["batch_size"] == 4 and info["options"]["seed"] == 3 and info["options"]["r"] == 2
    assert info["method"] == "lora_cat_data" and info["control"]["cat_options"]["fraction"] == 0.5
    # held-out loss on CAT's validation part, measured as CAT measures it; the fresh LoRA learned
    assert info["control"]["val_loss_after"] < info["control"]["val_loss_before"]
    rec = read_adapter(ctl)
    assert {f.r for f in rec.modules.values()} == {2} and len(rec.modules) == 2 * 7


# ----------------------------------------------------------------------------- config linking

def _raw(tmp_path, **methods):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for f in (a, b):
        f.write_text(json.dumps([{"instruction": "q", "input": "", "output": "x"}] * 4))
    return {"name": "c", "base": "tiny", "seed": 4, "train": {"r": 2, "max_steps": 50, "batch_size": 16, "warmup_steps": 3},
            "skills": {"a": {"data": [str(a)]}, "b": {"data": [str(b)]}, "c": {"data": [str(a)]}},
            "methods": {"base": {}, **methods},
            "eval": {"tasks": {"t": {"role": "target"}}}}


def _build(raw, tmp_path):
    from lorasoups.config import Known, build_config

    return build_config(raw, known=Known(tasks={"t": {"nll"}}, datasets=None), source=str(tmp_path / "c.yaml"))


def test_config_links_the_control_to_its_cat_row(tmp_path):
    raw = _raw(tmp_path, cat={"skills": ["a", "b"], "params": {"fraction": 0.2, "batch_size": 4}},
               lora_cat_data={"params": {"warmup_steps": 0}})
    cfg = _build(raw, tmp_path)
    ctl, cat = cfg.method("lora_cat_data"), cfg.method("cat")
    assert ctl.kind == "trained" and ctl.skills == ("a", "b") == cat.skills and ctl.data == cat.data
    p = dict(ctl.params)
    assert dict(p["cat_options"]) == {"fraction": 0.2, "batch_size": 4, "seed": 4}
    assert p["seed"] == 4 and p["r"] == 2 and p["warmup_steps"] == 0  # own > train; seed = CAT's
    assert "max_steps" not in p and "batch_size" not in p  # the train block's data/step values do not apply
    # a preset (or override) that changes CAT changes the control
    raw2 = json.loads(json.dumps(raw))
    raw2["methods"]["cat"]["params"]["max_steps"] = 7
    assert _build(raw2, tmp_path).method("lora_cat_data").params["cat_options"]["max_steps"] == 7


def test_config_links_cat_random_to_its_cat_row(tmp_path):
    raw = _raw(tmp_path, cat={"skills": ["a", "b"], "params": {"fraction": 0.2, "max_steps": 5}},
               cat_random={"params": {"random_norm": "factors"}},
               own={"method": "cat_random", "skills": ["a", "c"], "params": {"cat": None, "max_steps": 2}})
    cfg = _build(raw, tmp_path)
    ctl = cfg.method("cat_random")
    assert ctl.skills == ("a", "b") and dict(ctl.params) == {"fraction": 0.2, "max_steps": 5, "seed": 4,
                                                              "random_norm": "factors", "cat": "cat"}
    own = cfg.method("own")  # cat: null -> not linked, its own CAT options
    assert own.skills == ("a", "c") and dict(own.params) == {"cat": None, "max_steps": 2}


@pytest.mark.parametrize("methods,match", [
    ({"lora_cat_data": {}}, r"methods.lora_cat_data.params.cat: 'cat' is not a CAT row"),
    ({"mycat": {"method": "cat"}, "lora_cat_data": {"params": {"cat": "mycta"}}}, r"did you mean 'mycat'"),
    ({"cat": {"params": {"no_train": True}}, "lora_cat_data": {}}, r"does not train \(no_train: true\)"),
    ({"cat": {}, "lora_cat_data": {"params": {"max_steps": 3}}},
     r"methods.lora_cat_data.params.max_steps: comes from the CAT row 'cat'"),
    ({"cat": {}, "lora_cat_data": {"params": {"cat_options": {"fraction": 1}}}}, r"params.cat_options: filled in"),
    ({"cat": {"skills": ["a", "b"]}, "lora_cat_data": {"skills": ["a", "c"]}}, r"lora_cat_data.skills: \['a', 'c'\] differ"),
    ({"cat": {}, "lora_cat_data": {"params": {"r": 0}}}, r"lora_cat_data.params.r: input should be greater"),
    ({"cat_random": {"params": {"random_norm": "spectral"}}}, r"cat_random.params.random_norm: input should be 'delta'"),
    ({"cat_random": {"params": {"random_seed": "x"}}}, r"cat_random.params.random_seed: input should be a valid integer"),
    ({"cat_random": {"params": {"lr": 0.1}}}, r"cat_random.params.lr: renamed to 'learning_rate'"),
    ({"cat": {}, "cat_random": {"params": {"max_steps": 2}}}, r"cat_random.params.max_steps: comes from the CAT row"),
    ({"cat_random": {}}, r"cat_random.params.cat: 'cat' is not a CAT row"),
])
def test_config_refuses_bad_control_rows(tmp_path, methods, match):
    from lorasoups.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        _build(_raw(tmp_path, **methods), tmp_path)


def test_controls_run_through_the_runner(tiny_dir, skill_files, tmp_path):
    """Plan and runner: the control gets its CAT row's data and steps through the generic executor."""
    from lorasoups.experiment import Runner

    raw = {"name": "ctl", "base": str(tiny_dir), "seed": 2,
           "train": {"r": 2, "max_steps": 40, "batch_size": 8, "warmup_steps": 0, "save_steps": 1000, "cutoff_len": 64},
           "skills": {"a": {"data": [skill_files[0]]}, "b": {"data": [skill_files[1]]}},
           "methods": {"cat": {"params": {"max_steps": 3, "batch_size": 4, "fraction": 0.25, "cutoff_len": 64}},
                       "cat_random": {},
                       "lora_cat_data": {}},
           "eval": {"options": {"limit": 2}, "tasks": {"t": {"role": "target"}}}}
    cfg = _build(raw, tmp_path)
    def train(step, ctx):  # random skill LoRAs, no training time
        make_peft_adapter(tiny_dir, step.out, r=2, seed=len(step.label) + 3, std=0.2)
        return {}

    def evaluate(ctx, adapter, tasks, out, options):  # canned results, one folder per task
        for t in tasks:
            (out / t).mkdir(parents=True)
            (out / t / "samples.jsonl").write_text(json.dumps({"id": 0, "scores": {"nll": 1.0}}) + "\n")
            entry = {"metrics": {"nll": {"value": 1.0, "stderr": 0.0, "n": 1}}, "primary_metrics": ["nll"],
                     "metric_roles": {"nll": {"role": "primary", "better": "lower"}}}
            (out / t / "results.json").write_text(json.dumps({"tasks": {t: entry}}))

    r = Runner(cfg, tmp_path / "run", executors={"train": train, "evaluate": evaluate}, log=lambda s: None)
    steps = {s.id: s for s in r.steps}
    assert steps["build/lora_cat_data"].deps == () and steps["build/cat_random"].deps == ("train/a", "train/b")
    r.run()
    m = tmp_path / "run" / "methods"
    cat_info = json.loads((m / "cat" / "cat_options.json").read_text())
    rnd_info = json.loads((m / "cat_random" / "cat_options.json").read_text())
    info = json.loads((m / "lora_cat_data" / "train_info.json").read_text())
    assert cat_info["resolved"]["steps"] == rnd_info["resolved"]["steps"] == info["steps"] == 3
    assert (cat_info["resolved"]["train_examples_sha256"] == rnd_info["resolved"]["train_examples_sha256"]
            == info["control"]["train_examples_sha256"])
    assert info["options"]["batch_size"] == 4 and info["options"]["seed"] == 2
    assert (m / "cat_random" / "random_like.json").is_file()
