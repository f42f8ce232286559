"""CAT variants: the training mix (``mix: pooled|balanced``) and modules some adapter lacks
(``missing: share|exclude``), each against an independent computation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lorasoups.errors import ConfigError, DataError
from lorasoups.io.adapters import read_adapter
from lorasoups.models import load_base
from lorasoups.testing import make_peft_adapter
from lorasoups.train.cat import fit_coefficients, train_cat
from lorasoups.train.data import collate
from lorasoups.train.fused import attach_cat
from lorasoups.train.loop import batches
from lorasoups.train.mix import apply_mix, tag_skills


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory):
    """Two adapters with different target modules and layers: a adapts q, v in every layer; b
    adapts q, o in layer 0 only (and rsLoRA), so a module may hold both, a alone or b alone."""
    d = tmp_path_factory.mktemp("variant_adapters")
    a = make_peft_adapter(tiny_dir, d / "a", r=4, lora_alpha=8, seed=3, std=0.1, target_modules=("q_proj", "v_proj"))
    b = make_peft_adapter(tiny_dir, d / "b", r=2, lora_alpha=4, seed=4, std=0.1, use_rslora=True,
                          target_modules=("q_proj", "o_proj"), layers_to_transform=[0])
    return [a, b]


def skill_examples(seed=0, n0=10, n1=3):
    """Skill 0: n0 long answers; skill 1: n1 short ones (very different token totals)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, (n, lo, hi) in enumerate([(n0, 12, 20), (n1, 4, 7)]):
        for _ in range(n):
            L = int(torch.randint(lo, hi + 1, (1,), generator=g))
            ids = torch.randint(0, 256, (L,), generator=g).tolist()
            p = 3  # prompt tokens carry no loss
            out.append({"input_ids": ids, "labels": [-100] * p + ids[p:], "skill": k})
    perm = torch.randperm(len(out), generator=g).tolist()
    return [out[i] for i in perm]


def hf_token_mean(model, examples):
    """Mean next-token cross-entropy over the label tokens, by the model's own loss (transformers)."""
    b = collate(examples, 0)
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss


def hf_token_sums(model, examples):
    """Per example: (sum of next-token CE over its label tokens, number of them), computed directly."""
    b = collate(examples, 0)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    tgt = b["labels"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100,
                         reduction="none").view(tgt.shape)
    return ce.sum(1), (tgt != -100).sum(1)


def fresh(tiny_dir, pair, **kw):
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, [read_adapter(p) for p in pair], init="random", seed=2, **kw)
    return model, h


def kit_gradient(tiny_dir, pair, train, **fit_kw):
    model, h = fresh(tiny_dir, pair)
    fit_coefficients(model, h, train, pad_token_id=0, learning_rate=1e-3, max_steps=1, precision="fp32", **fit_kw)
    return h.coefficients.logits.grad.clone()  # the grad of the one step stays after it


def reference_gradient(tiny_dir, pair, loss_fn):
    model, h = fresh(tiny_dir, pair)
    model.train()
    loss_fn(model).backward()
    return h.coefficients.logits.grad.clone()


@pytest.mark.parametrize("group_by_length", [False, True])
def test_balanced_full_batch_gradient_is_the_mean_of_skill_means(tiny_dir, pair, group_by_length):
    ex = skill_examples()
    train, rec = apply_mix(ex, [], "balanced", ["long", "short"])
    assert [s["token_share"] for s in rec["skills"]] == [0.5, 0.5]
    assert [s["train_examples"] for s in rec["skills"]] == [10, 3]
    g = kit_gradient(tiny_dir, pair, train, batch_size=len(train), group_by_length=group_by_length)

    def mean_of_skill_means(model):
        return sum(hf_token_mean(model, [e for e in ex if e["skill"] == k]) for k in (0, 1)) / 2

    ref = reference_gradient(tiny_dir, pair, mean_of_skill_means)
    assert ref.abs().max() > 1e-4
    assert torch.allclose(g, ref, rtol=1e-4, atol=1e-7), (g - ref).abs().max()
    # the pooled objective is the token mean of the whole mix: another gradient
    pooled, rec_p = apply_mix(ex, [], "pooled", ["long", "short"])
    assert rec_p["skills"][0]["token_share"] > 0.8
    gp = kit_gradient(tiny_dir, pair, pooled, batch_size=len(pooled), group_by_length=group_by_length)
    ref_p = reference_gradient(tiny_dir, pair, lambda m: hf_token_mean(m, ex))
    assert torch.allclose(gp, ref_p, rtol=1e-4, atol=1e-7)
    assert (gp - g).abs().max() > 10 * (g - ref).abs().max() + 1e-6


def test_balanced_micro_batches_are_weighted_sums(tiny_dir, pair):
    """grad_accum 2 over batches of 4 (length-grouped): the step's loss is the mean over its
    micro-batches of Σ_e w_e·CE_e / 4 with w = N / (K T_k) on every token of skill k."""
    ex = skill_examples(1)
    train, rec = apply_mix(ex, [], "balanced")
    T = {s["name"]: s["train_tokens"] for s in rec["skills"]}
    w = {k: len(ex) / (2 * T[str(k)]) for k in (0, 1)}
    assert all(e["loss_weight"] == pytest.approx(w[e["skill"]]) for e in train)
    g = kit_gradient(tiny_dir, pair, train, batch_size=4, grad_accum=2, group_by_length=True, seed=5)
    stream = batches(train, 4, 5, True)
    micro = [next(stream), next(stream)]

    def loss(model):
        tot = 0
        for mb in micro:
            s, _ = hf_token_sums(model, mb)
            tot = tot + (torch.tensor([w[e["skill"]] for e in mb]) * s).sum() / 4
        return tot / 2

    ref = reference_gradient(tiny_dir, pair, loss)
    assert torch.allclose(g, ref, rtol=1e-4, atol=1e-7), (g - ref).abs().max()


@pytest.mark.parametrize("group_by_length", [True, False])
def test_balanced_epoch_of_micro_batches_is_the_mean_of_skill_means(tiny_dir, pair, group_by_length):
    """One step accumulating a whole epoch of batches of 4 (12 examples, 3 micro-batches; length
    grouping puts the long and the short skill in different batches) has the gradient of the mean of
    the skill means: the weights do not cancel within a one-skill batch."""
    ex = skill_examples(2, n0=9, n1=3)
    train, _ = apply_mix(ex, [], "balanced")
    g = kit_gradient(tiny_dir, pair, train, batch_size=4, grad_accum=3, group_by_length=group_by_length, seed=1)
    ref = reference_gradient(tiny_dir, pair,
                             lambda m: sum(hf_token_mean(m, [e for e in ex if e["skill"] == k]) for k in (0, 1)) / 2)
    assert torch.allclose(g, ref, rtol=1e-4, atol=1e-7), (g - ref).abs().max()
    if group_by_length:  # the case a per-batch token mean gets wrong: some batch holds one skill only
        stream = batches(train, 4, 1, True)
        assert any(len({e["skill"] for e in next(stream)}) == 1 for _ in range(3))


def test_objective_shares_follow_the_batches():
    from lorasoups.train.mix import objective_shares

    ex = skill_examples(2, n0=9, n1=3)
    kw = dict(batch_size=4, world=1, grad_accum=1, steps=3, seed=1)
    bal, _ = apply_mix(ex, [], "balanced")
    pooled, rec = apply_mix(ex, [], "pooled")
    assert objective_shares(bal, None, group_by_length=True, **kw) == pytest.approx({"0": 0.5, "1": 0.5})
    # pooled, one full batch: the token shares; batches of 4: each batch's token mean weighs 1/3
    assert objective_shares(pooled, None, **{**kw, "batch_size": 12, "steps": 1}, group_by_length=False) == \
        pytest.approx({s["name"]: s["token_share"] for s in rec["skills"]}, abs=1e-5)
    stream = batches(pooled, 4, 1, True)
    mbs = [next(stream) for _ in range(3)]
    tok = [[sum(len(e["labels"]) - 3 for e in mb if e["skill"] == k) for k in (0, 1)] for mb in mbs]
    want = {str(k): sum(t[k] / sum(t) for t in tok) / 3 for k in (0, 1)}
    assert objective_shares(pooled, None, group_by_length=True, **kw) == pytest.approx(want, abs=1e-5)
    assert objective_shares([{"input_ids": [1, 2]}], None, group_by_length=True, **kw) == {}


def test_mix_errors():
    plain = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    with pytest.raises(ConfigError, match="mix=balanced needs each example's skill"):
        apply_mix(plain, [], "balanced")
    assert apply_mix(plain, [], "pooled") == (plain, None)
    with pytest.raises(ConfigError, match="unknown mix"):
        apply_mix(plain, [], "even")
    with pytest.raises(ValueError):
        tag_skills(plain, [0, 1])


def test_fit_refuses_partly_weighted_examples(tiny_dir, pair):
    model, h = fresh(tiny_dir, pair)
    ex = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "loss_weight": 1.0}, {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}]
    with pytest.raises(DataError, match="1 of 2 examples carry a loss_weight"):
        fit_coefficients(model, h, ex, pad_token_id=0, learning_rate=0.1, max_steps=1)


def test_train_cat_balanced_records_the_mix(tiny_dir, pair, tmp_path):
    def recs(path, n, k):
        path.write_text(json.dumps([{"instruction": f"item {i}", "input": "", "output": "word " * k} for i in range(n)]))
        return str(path)

    data = [recs(tmp_path / "long.json", 24, 9), recs(tmp_path / "short.json", 8, 1)]
    docs = {}
    for mix in ("pooled", "balanced"):
        out = train_cat(str(tiny_dir), pair, data, tmp_path / mix, mix=mix, fraction=1.0, max_steps=2, batch_size=8,
                        precision="fp32", device="cpu", learning_rate=0.2)
        docs[mix] = json.loads((out / "cat_options.json").read_text())
    for mix, d in docs.items():
        sk = d["mix"]["skills"]
        assert d["mix"]["mix"] == mix and [s["name"] for s in sk] == ["long", "short"]
        assert sum(s["train_examples"] + s["val_examples"] for s in sk) == 32
        assert set(d["val_loss_by_skill"]) <= {"long", "short"} and d["val_loss_by_skill"]
    assert docs["pooled"]["mix"]["skills"][0]["token_share"] > 0.7
    assert [s["token_share"] for s in docs["balanced"]["mix"]["skills"]] == [0.5, 0.5]


# ---------------------------------------------------------------- missing: share | exclude

def expected_deltas(records, logits, groups, granularity, normalize, missing):
    """module -> Σ_{i present} c_i s_i B_i A_i, with c from an independent (math-module) softmax."""
    def group_of(m):
        return m if granularity == "module" else "layers." + m.split(".layers.")[1].split(".")[0]

    out = {}
    for m in sorted({m for r in records for m in r.modules}):
        lg = logits[groups.index(group_of(m))].tolist()
        pres = [i for i, r in enumerate(records) if m in r.modules]
        if normalize == "none":
            c = {i: lg[i] for i in pres}
        else:
            over = pres if missing == "exclude" else range(len(records))
            z = sum(math.exp(lg[j]) for j in over)
            c = {i: math.exp(lg[i]) / z for i in pres}
        out[m] = sum(c[i] * records[i].modules[m].scale * records[i].modules[m].B.double() @ records[i].modules[m].A.double()
                     for i in pres)
    return out


@pytest.mark.parametrize("normalize", ["softmax", "none"])
@pytest.mark.parametrize("missing", ["share", "exclude"])
@pytest.mark.parametrize("granularity", ["module", "layer"])
def test_export_products_for_missing_modules(tiny_dir, pair, normalize, missing, granularity):
    records = [read_adapter(p) for p in pair]
    assert set(records[0].modules) != set(records[1].modules)
    model, _ = load_base(str(tiny_dir))
    h = attach_cat(model, records, granularity=granularity, normalize=normalize, init="random", seed=7, missing=missing)
    logits = h.coefficients.logits.detach().clone()
    exp = expected_deltas(records, logits, h.coefficients.groups, granularity, normalize, missing)
    got = h.export_factors()
    assert set(got) == set(exp)
    for m, f in got.items():
        assert torch.allclose((f.scale * f.B.double() @ f.A.double()), exp[m], atol=1e-6), m
    # the table reports the coefficients each module uses; under exclude+softmax they sum to 1
    table = h.coefficient_table()
    only_b = "model.layers.0.self_attn.o_proj"
    assert set(table[only_b]) == {"b"}
    if normalize == "softmax" and missing == "exclude":
        assert all(sum(v["final"] for v in row.values()) == pytest.approx(1.0) for row in table.values())
        assert table[only_b]["b"]["final"] == pytest.approx(1.0)
    elif normalize == "softmax":
        assert table[only_b]["b"]["final"] < 1.0  # a's logit keeps a share in a module it lacks


@pytest.mark.parametrize("normalize,init", [("softmax", "0.25,0.75"), ("none", "0.4,1.5")])
def test_exported_folder_for_missing_modules(tiny_dir, pair, tmp_path, normalize, init):
    """Through train_cat's export (no_train): the written PEFT folder holds Σ_present c_i s_i B_i A_i."""
    records = [read_adapter(p) for p in pair]
    w = [float(x) for x in init.split(",")]
    for missing in ("share", "exclude"):
        out = train_cat(str(tiny_dir), pair, None, tmp_path / missing, no_train=True, normalize=normalize,
                        init=init, missing=missing, device="cpu")
        got = read_adapter(out).modules
        for m, f in got.items():
            pres = [i for i, r in enumerate(records) if m in r.modules]
            if normalize == "none":
                c = {i: w[i] for i in pres}
            else:
                tot = sum(w[j] for j in (pres if missing == "exclude" else range(2)))
                c = {i: w[i] / tot for i in pres}
            ref = sum(c[i] * records[i].modules[m].scale * records[i].modules[m].B.double() @ records[i].modules[m].A.double()
                      for i in pres)
            assert torch.allclose(f.scale * f.B.double() @ f.A.double(), ref, atol=1e-6), (missing, m)
        doc = json.loads((out / "cat_coefficients.json").read_text())
        assert doc["missing"] == missing


def test_exclude_gives_a_lone_adapter_no_gradient(tiny_dir, pair):
    """Under exclude+softmax a module with one adapter uses coefficient 1 whatever the logits: a
    group whose modules all hold one adapter gets no gradient."""
    model, h = fresh(tiny_dir, pair, missing="exclude")
    ex = skill_examples()
    fit_coefficients(model, h, ex, pad_token_id=0, learning_rate=1e-3, max_steps=1, batch_size=len(ex), precision="fp32")
    grad = h.coefficients.logits.grad
    groups = h.coefficients.groups
    assert grad[groups.index("model.layers.0.self_attn.o_proj")].abs().max() == 0
    assert grad[groups.index("model.layers.1.self_attn.v_proj")].abs().max() == 0
    assert grad[groups.index("model.layers.0.self_attn.q_proj")].abs().max() > 0


def test_pooled_is_the_plain_token_mean_bit_for_bit(tiny_dir, pair, tmp_path):
    """mix=pooled through data specs (examples tagged with their skill, mix recorded) trains exactly
    as the same examples given untagged: the mix bookkeeping changes nothing in the pooled run."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from lorasoups.train.data import load_training_data

    def recs(path, n, k):
        path.write_text(json.dumps([{"instruction": f"q {i}", "input": "", "output": "ab " * (1 + i % k)} for i in range(n)]))
        return str(path)

    data = [recs(tmp_path / "x.json", 20, 6), recs(tmp_path / "y.json", 8, 2)]
    kw = dict(fraction=1.0, max_steps=3, batch_size=4, learning_rate=0.3, precision="fp32", device="cpu", seed=2,
              init="random")
    a = train_cat(str(tiny_dir), pair, data, tmp_path / "specs", **kw)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    ex = load_training_data(data, tok, cutoff_len=256, fraction=1.0, seed=2, skip_long_prompts=True).examples
    assert all("skill" not in e for e in ex)
    b = train_cat(str(tiny_dir), pair, ex, tmp_path / "examples", **kw)
    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    la = [json.loads(x)["loss"] for x in (a / "cat_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "cat_log.jsonl").read_text().splitlines()]
    assert la == lb and la[1] is not None
    oa, ob = (json.loads((d / "cat_options.json").read_text()) for d in (a, b))
    assert oa["val_loss_after"] == ob["val_loss_after"]
    assert oa["mix"]["mix"] == "pooled" and ob["mix"] is None  # untagged examples: no per-skill record
