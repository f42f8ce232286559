"""CAT (learnable concatenation of LoRAs) on the tiny model: equivalence of the fused module, a
naive per-adapter reference and the exported PEFT folder; frozen base and factors; coefficients
that learn; the static (--no-train) controls; CLI and errors."""

import json
import math

import pytest
import torch

from lorasoups.errors import AdapterError, ConfigError
from lorasoups.io.adapters import read_adapter
from lorasoups.models import load_base
from lorasoups.provenance import sha256_dir
from lorasoups.testing import make_peft_adapter, peft_logits
from lorasoups.train.cat import fit_coefficients, train_cat
from lorasoups.train.loss import lm_loss_sum
from lorasoups.train.fused import attach_cat, detach_cat

ADAPTERS = [  # different ranks, alphas, rsLoRA and target modules
    dict(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "up_proj", "down_proj")),
    dict(r=2, lora_alpha=16, use_rslora=True, target_modules=("q_proj", "k_proj", "o_proj", "down_proj")),
    dict(r=3, lora_alpha=3, target_modules=("q_proj", "v_proj", "gate_proj", "o_proj"),
         rank_pattern={"layers.1.self_attn.q_proj": 5}),
]


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("cat_adapters")
    return [make_peft_adapter(tiny_dir, d / f"a{i}", seed=10 + i, std=0.1, **kw) for i, kw in enumerate(ADAPTERS)]


def synthetic_examples(n=16, length=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 256, (int(torch.randint(6, length + 1, (1,), generator=g)),), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return out


# ---------------------------------------------------------------- naive reference (written out here)

def group_of(module, granularity):
    if granularity == "module":
        return module
    if granularity == "layer":
        return "layers." + module.split(".layers.")[1].split(".")[0]
    return "all"


def reference_coefficients(records, logits_by_group, granularity, normalize):
    """module -> {adapter index: c}, computed from raw logits with an independent softmax."""
    modules = sorted({m for r in records for m in r.modules})
    present_in_group = {}
    for m in modules:
        for i, r in enumerate(records):
            if m in r.modules:
                present_in_group.setdefault(group_of(m, granularity), set()).add(i)
    out = {}
    for m in modules:
        g = group_of(m, granularity)
        lg = logits_by_group[g]
        pres = sorted(present_in_group[g])
        if normalize == "softmax":  # over all n adapters; an absent adapter's ΔW is zero
            z = sum(math.exp(x) for x in lg)
            c = {j: math.exp(lg[j]) / z for j in pres}
        else:
            c = {j: lg[j] for j in pres}
        out[m] = {i: c[i] for i, r in enumerate(records) if m in r.modules}
    return out


def naive_logits(tiny_dir, records, coefs, input_ids):
    """Base model + forward hooks adding Σ_i c_i s_i B_i A_i x in a Python loop over adapters."""
    model, _ = load_base(str(tiny_dir))
    mods = dict(model.named_modules())
    for m, cm in coefs.items():
        terms = [(cm[i], records[i].modules[m]) for i in sorted(cm)]

        def hook(mod, inp, out, terms=terms):
            x = inp[0]
            for c, f in terms:
                out = out + c * f.scale * (x @ f.A.float().T) @ f.B.float().T
            return out

        mods[m].register_forward_hook(hook)
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def fused_logits(tiny_dir, records, logits_by_group, granularity, normalize, input_ids):
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, records, granularity=granularity, normalize=normalize, init="random")
    with torch.no_grad():
        h.coefficients.logits.copy_(torch.tensor([logits_by_group[g] for g in h.coefficients.groups]))
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("n,granularity,normalize", [(2, "module", "softmax"), (3, "module", "none"),
                                                     (3, "layer", "softmax"), (2, "global", "none")])
def test_fused_naive_and_exported_agree(tiny_dir, adapters, tmp_path, input_ids, n, granularity, normalize):
    paths = adapters[:n]
    records = [read_adapter(p) for p in paths]
    out = train_cat(str(tiny_dir), paths, synthetic_examples(), tmp_path / "cat", granularity=granularity,
                    normalize=normalize, init="random", seed=5, learning_rate=0.2, max_steps=3, batch_size=4,
                    precision="fp32", device="cpu", val_fraction=0.0,
                    group_by_length=False)  # the random-batch trajectory the 1e-5 tolerance below was set on
    doc = json.loads((out / "cat_coefficients.json").read_text())
    logits = {g: v["logits_final"] for g, v in doc["groups"].items()}
    moved = max(abs(a - b) for v in doc["groups"].values() for a, b in zip(v["logits_final"], v["logits_initial"]))
    assert moved > 0.1  # training did change the coefficients that are compared below
    coefs = reference_coefficients(records, logits, granularity, normalize)
    # cat_coefficients.json reports the same normalised coefficients
    for m, cm in coefs.items():
        for i, c in cm.items():
            assert doc["modules"][m][records[i].name]["final"] == pytest.approx(c, abs=1e-6)
    ref = naive_logits(tiny_dir, records, coefs, input_ids)
    fused = fused_logits(tiny_dir, records, logits, granularity, normalize, input_ids)
    exported = peft_logits(tiny_dir, out, input_ids)
    base = peft_logits(tiny_dir, None, input_ids)
    assert (ref - base).abs().max() > 1e-2  # the adapters do something
    assert (fused - ref).abs().max() <= 1e-5
    assert (exported - ref).abs().max() <= 1e-5
    # exported: one LoRA of rank Σ r_i per module, scaling 1, zero-padded to the largest Σ r_i so
    # that every reader (PEFT, vLLM, llama.cpp) computes the same ΔW (issue #13 item 9)
    rec = read_adapter(out)
    sums = {m: sum(records[i].modules[m].r for i in coefs[m]) for m in rec.modules}
    for m, f in rec.modules.items():
        assert f.r == max(sums.values()) and f.scale == 1.0
        assert not f.A[sums[m]:].any() and not f.B[:, sums[m]:].any()


def test_only_coefficients_change(tiny_dir, adapters):
    records = [read_adapter(p) for p in adapters]
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, records, init="uniform")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["cat_coefficients.logits"]

    def frozen_state():
        return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "cat_coefficients.logits"}

    before = frozen_state()
    logits0 = h.coefficients.logits.detach().clone()
    files0 = [sha256_dir(p) for p in adapters]
    fit_coefficients(model, h, synthetic_examples(), pad_token_id=0, learning_rate=0.1, max_steps=3, batch_size=4)
    after = frozen_state()
    assert set(before) == set(after) and any(".lora_A" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(logits0, h.coefficients.logits.detach())
    assert [sha256_dir(p) for p in adapters] == files0
    # detaching restores the original modules
    detach_cat(model, h)
    assert not any(type(m).__name__ == "FusedConcatLinear" for m in model.modules())
    assert not hasattr(model, "cat_coefficients")


def distill_examples(tiny_dir, adapter, n=32, length=20, seed=0):
    """Targets that favour one adapter: random inputs labelled with the argmax next token of the
    model with only ``adapter`` applied (PEFT)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, length), generator=g)
    with torch.no_grad():
        pred = peft_logits(tiny_dir, adapter, ids).argmax(-1)  # (n, length)
    return [{"input_ids": ids[k].tolist(), "labels": [-100] + pred[k, :-1].tolist()} for k in range(n)]


@pytest.fixture(scope="module")
def full_adapters(tiny_dir, tmp_path_factory):
    """Two adapters on all seven projections (different ranks), so every module has both."""
    d = tmp_path_factory.mktemp("cat_full")
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return [make_peft_adapter(tiny_dir, d / "f0", r=4, lora_alpha=8, target_modules=targets, seed=21, std=0.1),
            make_peft_adapter(tiny_dir, d / "f1", r=2, lora_alpha=4, target_modules=targets, seed=22, std=0.1)]


@pytest.mark.parametrize("favoured", [0, 1])
def test_favoured_adapter_coefficients_rise(tiny_dir, full_adapters, favoured):
    records = [read_adapter(p) for p in full_adapters]
    data = distill_examples(tiny_dir, full_adapters[favoured], seed=favoured)
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, records, granularity="module", normalize="softmax", init="uniform")
    log = fit_coefficients(model, h, data, pad_token_id=0, learning_rate=0.1, max_steps=20, batch_size=8, lr_scheduler="constant")
    table = h.coefficient_table()
    name = records[favoured].name
    shared = [m for m, row in table.items() if len(row) == 2]  # modules where both adapters compete
    rose = [m for m in shared if table[m][name]["final"] > table[m][name]["initial"] + 0.02]
    assert len(shared) == 14
    print(favoured, len(rose), [round(table[m][name]["final"], 3) for m in shared])
    assert len(rose) >= 0.75 * len(shared), (len(rose), len(shared))
    assert log[-1]["loss"] < log[1]["loss"]


@pytest.mark.parametrize("normalize,weight", [("softmax", 0.5), ("none", 1.0)])
def test_no_train_uniform_equals_merge_concat(tiny_dir, adapters, tmp_path, input_ids, normalize, weight):
    from lorasoups.merge.concat import concat_factors

    paths = adapters[:2]
    out = train_cat(str(tiny_dir), paths, None, tmp_path / "static", normalize=normalize, no_train=True,
                    precision="fp32", device="cpu")
    recs = [read_adapter(p) for p in paths]
    got = read_adapter(out)
    assert set(got.modules) == set(recs[0].modules) | set(recs[1].modules)
    for m, f in got.modules.items():
        want = concat_factors([r.modules.get(m) for r in recs], [weight, weight])
        assert torch.allclose(f.delta(), want.delta(), atol=1e-6)
    try:
        from lorasoups.merge.driver import merge_adapters
    except ImportError:
        return  # the merge driver is built separately; the factor-level check above stands
    merged = merge_adapters(paths, "concat", tmp_path / "merged", weights=[weight, weight], base=str(tiny_dir))
    assert (peft_logits(tiny_dir, out, input_ids) - peft_logits(tiny_dir, merged, input_ids)).abs().max() <= 1e-5
    log = [json.loads(x) for x in (out / "cat_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and all(s["mean_abs_change"] == 0 for s in log[0]["coefficients"].values())


def test_cli_writes_everything(tiny_dir, adapters, tmp_path, capsys):
    from lorasoups.cli.main import main

    data = tmp_path / "skill.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."}
                                for i in range(20)]))
    out = tmp_path / "cat_out"
    args = ["cat", "--base", str(tiny_dir), "--adapters", *map(str, adapters), "--data", str(data),
            "--out", str(out), "--max-steps", "3", "--batch-size", "4", "--learning-rate", "0.05", "--granularity", "layer",
            "--init", "random", "--fraction", "1.0", "--precision", "fp32", "--seed", "7", "--quiet"]
    assert main(args) == 0
    # 18 training and 2 held-out examples: the user is told the mix is small (noisy coefficients)
    assert "cat: warning: the training mix is small (18 training, 2 held-out" in capsys.readouterr().out
    opts = json.loads((out / "cat_options.json").read_text())
    assert opts["options"]["granularity"] == "layer" and opts["options"]["init"] == "random"
    assert opts["options"]["learning_rate"] == 0.05 and opts["resolved"]["steps"] == 3 and opts["options"]["seed"] == 7
    assert opts["resolved"]["train_examples"] == 18 and opts["resolved"]["val_examples"] == 2
    assert opts["val_loss_before"] > 0 and opts["val_loss_after"] > 0
    log = [json.loads(x) for x in (out / "cat_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3] and all(r["loss"] > 0 for r in log[1:])
    coef = json.loads((out / "cat_coefficients.json").read_text())
    assert len(coef["groups"]) == 2  # layer granularity on the 2-layer model
    row = coef["modules"]["model.layers.0.self_attn.q_proj"]
    assert set(row) == {"a0", "a1", "a2"} and all({"initial", "final"} <= set(v) for v in row.values())
    assert (out / "coefficients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"]
    # existing output without --overwrite: exit code 2
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0


def test_listed_as_method():
    from lorasoups.methods import load_methods

    m = load_methods().get("cat")
    assert (m.kind, m.space) == ("learned", "concat")
    assert {"granularity", "normalize", "init", "learning_rate", "max_steps", "fraction", "no_train"} <= set(m.params)


def test_old_option_names_are_refused_naming_the_new_ones(tiny_dir, adapters, tmp_path):
    """lr / steps / schedule were renamed (issue #14): the message names the new option, before any model is loaded."""
    with pytest.raises(ConfigError) as e:
        train_cat(str(tiny_dir), adapters[:2], None, tmp_path / "x", lr=0.1, steps=2, schedule="linear", no_train=True)
    assert {"cat.lr: renamed to 'learning_rate'", "cat.steps: renamed to 'max_steps'",
            "cat.schedule: renamed to 'lr_scheduler'"} <= set(e.value.problems)
    assert not (tmp_path / "x").exists()


def test_errors(tiny_dir, adapters, tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        train_cat(str(tiny_dir), adapters[:1], None, tmp_path / "x", no_train=True)
    with pytest.raises(ConfigError, match="--data"):
        train_cat(str(tiny_dir), adapters[:2], None, tmp_path / "x")
    with pytest.raises(ConfigError, match="3 values for 2 adapters"):
        train_cat(str(tiny_dir), adapters[:2], None, tmp_path / "x", init="0.2,0.3,0.5", no_train=True)
    with pytest.raises(ConfigError, match="> 0"):
        train_cat(str(tiny_dir), adapters[:2], None, tmp_path / "x", init="0.5,-1", no_train=True)
    with pytest.raises(Exception, match="overwrite input"):
        train_cat(str(tiny_dir), adapters[:2], None, adapters[0], no_train=True)
    bad = read_adapter(adapters[0])
    bad.modules["model.layers.7.self_attn.q_proj"] = bad.modules["model.layers.0.self_attn.q_proj"]
    model, _ = load_base(str(tiny_dir))
    with pytest.raises(AdapterError, match="layers.7.self_attn.q_proj is not in the base model"):
        attach_cat(model, [bad, read_adapter(adapters[1])])
    assert not tmp_path.joinpath("x").exists()


def test_init_values_and_masking(tiny_dir, adapters):
    recs = [read_adapter(p) for p in adapters[:2]]
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, recs, normalize="softmax", init="0.2,0.6")
    table = h.coefficient_table()
    both = table["model.layers.0.self_attn.q_proj"]
    assert both["a0"]["initial"] == pytest.approx(0.25) and both["a1"]["initial"] == pytest.approx(0.75)
    only1 = table["model.layers.0.self_attn.k_proj"]  # k_proj is adapted by a1 only; a0's ΔW is 0 there
    assert set(only1) == {"a1"} and only1["a1"]["initial"] == pytest.approx(0.75)
    h2 = attach_cat(load_base(str(tiny_dir))[0], recs, normalize="none", init="0.2,0.6")
    assert h2.coefficient_table()["model.layers.0.self_attn.q_proj"]["a0"]["initial"] == pytest.approx(0.2)


def test_loss_matches_transformers(tiny_dir):
    from lorasoups.train.data import collate

    model, _ = load_base(str(tiny_dir))
    b = collate(synthetic_examples(n=4), 0)
    b["labels"][:, :3] = -100  # a masked prompt
    with torch.no_grad():
        out = model(**b)
        s, n = lm_loss_sum(model, b, chunk=5)
    assert float(s / n) == pytest.approx(float(out.loss), abs=1e-5)


def test_cli_flags_come_from_the_spec():
    """Every CatOptions option is a flag with the spec's choices; given flags parse to the spec's names."""
    import argparse

    from lorasoups.cli import cat_cmd
    from lorasoups.train.options import CatOptions

    ap = argparse.ArgumentParser()
    cat_cmd.add_parser(ap.add_subparsers())
    args = ap.parse_args(["cat", "--adapters", "a", "b", "--out", "o", "--learning-rate", "0.5", "--max-steps", "4",
                          "--lr-scheduler", "cosine", "--no-group-by-length"])
    assert CatOptions.from_args(args) == {"learning_rate": 0.5, "max_steps": 4, "lr_scheduler": "cosine",
                                          "group_by_length": False}
    flags = {a.dest for a in ap._subparsers._group_actions[0].choices["cat"]._actions}
    assert set(CatOptions.model_fields) <= flags


def test_length_grouped_batches_same_examples_per_epoch_seeded():
    """batches(group_by_length=True): each epoch holds every example once (last short batch kept),
    seeded, with far less padding than random batches of the same epoch."""
    import itertools
    import random as _random

    from lorasoups.train.loop import batches

    rng = _random.Random(5)
    exs = [{"id": i, "input_ids": [1] * rng.randint(5, 300)} for i in range(203)]
    bs, per_epoch = 8, 26  # ceil(203 / 8)

    def epochs(seed, grouped, n=2):
        it = batches(exs, bs, seed, group_by_length=grouped)
        return [[[e["id"] for e in b] for b in itertools.islice(it, per_epoch)] for _ in range(n)]

    def padding(ep):
        return sum(max(len(exs[i]["input_ids"]) for i in b) * len(b) - sum(len(exs[i]["input_ids"]) for i in b)
                   for b in ep)

    g, r = epochs(0, True), epochs(0, False)
    for ep in g + r:
        assert sorted(i for b in ep for i in b) == list(range(203))
        assert sorted(len(b) for b in ep)[1:] == [bs] * (per_epoch - 1)
    assert g == epochs(0, True) and g[0] != g[1] and g != epochs(1, True)
    assert padding(g[0]) < 0.25 * padding(r[0]), (padding(g[0]), padding(r[0]))
