"""Mixture of LoRA experts: gating math, equality with the concat merge at equal weights, router
training with frozen experts, the folder format (save -> load -> same logits, checksums), CLI."""

import json
import shutil

import pytest
import torch

from lorasoups.errors import AdapterError, ConfigError
from lorasoups.io.adapters import read_adapter, write_adapter
from lorasoups.merge.concat import concat_factors
from lorasoups.moe import (MoeLoraLinear, attach_moe, init_routers, is_moe_folder, load_balance_loss, load_moe_model,
                           parse_router_layers, read_moe_config, routed_modules, save_moe_folder, topk_softmax,
                           train_moe)
from lorasoups.provenance import sha256_dir
from lorasoups.testing import ALL_LLAMA_TARGETS, base_plus_delta_logits, make_peft_adapter
from lorasoups.types import LoraFactors


def _load(tiny_dir):
    from lorasoups.models import load_base

    return load_base(str(tiny_dir))[0]


@pytest.fixture(scope="module")
def experts(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    # all seven Llama projections (down_proj's input is the MLP width 128, not the hidden size 64),
    # different ranks and scales, and a third expert that lacks most modules
    a = make_peft_adapter(tiny_dir, root / "skill_a", r=4, lora_alpha=8, target_modules=ALL_LLAMA_TARGETS, seed=1, std=0.2)
    b = make_peft_adapter(tiny_dir, root / "skill_b", r=2, lora_alpha=1, target_modules=ALL_LLAMA_TARGETS, seed=2, std=0.3)
    c = make_peft_adapter(tiny_dir, root / "skill_c", r=4, lora_alpha=4, target_modules=["q_proj", "down_proj"], seed=3, std=0.2)
    return {"root": root, "paths": [a, b, c]}


def test_topk_softmax_and_balance_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0], [0.0, 0.0, 3.0, 0.0]])
    g, idx = topk_softmax(logits, 2)
    assert torch.allclose(g.sum(-1), torch.ones(2))
    assert (g > 0).sum(-1).tolist() == [2, 2]
    assert g[0, 0] > g[0, 3] > 0 and g[0, 1] == 0 and g[0, 2] == 0
    assert torch.allclose(g[0, [0, 3]], torch.softmax(torch.tensor([2.0, 1.0]), -1))
    full, _ = topk_softmax(logits, 4)
    assert torch.allclose(full, torch.softmax(logits, -1))
    with pytest.raises(ConfigError):
        topk_softmax(logits, 5)
    # uniform routing gives 1; all tokens on one expert with confident probabilities gives ~n
    n = 4
    uni = torch.zeros(8, n)
    spread = (torch.arange(8) % n)[:, None]  # each expert gets 2 of 8 tokens
    assert float(load_balance_loss(uni, spread)) == pytest.approx(1.0)
    conc = torch.tensor([[10.0, 0, 0, 0]] * 8)
    assert float(load_balance_loss(conc, topk_softmax(conc, 1)[1])) == pytest.approx(n, rel=1e-3)
    mask = torch.tensor([1] * 4 + [0] * 4)
    mixed = torch.cat([conc[:4], uni[:4]])
    assert float(load_balance_loss(mixed, topk_softmax(mixed, 1)[1], mask)) == pytest.approx(n, rel=1e-3)


def test_parse_router_layers():
    assert parse_router_layers("all", 30) is None
    assert parse_router_layers("none", 30) == []
    assert parse_router_layers("0, 2,10-12", 30) == [0, 2, 10, 11, 12]
    assert parse_router_layers("-1", 30) == [29]
    assert parse_router_layers([3, 1], 30) == [1, 3]
    with pytest.raises(ConfigError):
        parse_router_layers("30", 30)
    with pytest.raises(ConfigError):
        parse_router_layers("a-b", 30)
    mods = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "lm_head"]
    assert routed_modules(mods, [1]) == ["model.layers.1.self_attn.q_proj"]
    assert routed_modules(mods, None) == sorted(mods)


def test_equal_weights_equal_concat_merge(tiny_dir, experts, input_ids):
    """top-k = n and a router forced to constant equal gates (zero router weights) == the concat
    merge with weights 1/n; so is the router-less (uniform) mixing."""
    recs = [read_adapter(p) for p in experts["paths"]]
    n = len(recs)
    mods = sorted({m for r in recs for m in r.modules})
    ref_deltas = {m: concat_factors([r.modules.get(m) for r in recs], [1.0 / n] * n).delta() for m in mods}
    ref = base_plus_delta_logits(tiny_dir, ref_deltas, input_ids)
    for routed in (None, []):
        model = _load(tiny_dir)
        layers = attach_moe(model, recs, top_k=n, routed=routed)
        init_routers(layers, 0.0)
        assert sum(w.router is not None for w in layers.values()) == (len(mods) if routed is None else 0)
        with torch.no_grad():
            got = model(input_ids=input_ids).logits
        assert (got - ref).abs().max() <= 1e-5
    # the router reads the module's own input: down_proj's router is (n, intermediate 128)
    layers = attach_moe(_load(tiny_dir), recs, top_k=2)
    assert layers["model.layers.0.mlp.down_proj"].router.weight.shape == (3, 128)
    assert layers["model.layers.0.self_attn.q_proj"].router.weight.shape == (3, 64)


def test_topk_layer_mixes_selected_experts_per_token():
    """Per token: top-2 of 3 experts with renormalised softmax gates; top-1 with the Switch gate
    (the chosen expert's full-softmax probability, so the router still gets a gradient)."""
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    fs = [LoraFactors(torch.randn(2, 16), torch.randn(8, 2), 0.5), None, LoraFactors(torch.randn(3, 16), torch.randn(8, 3), 2.0)]
    deltas = [f.delta() if f is not None else torch.zeros(8, 16) for f in fs]
    x = torch.randn(5, 16)
    for k in (1, 2):
        layer = MoeLoraLinear(base, fs, top_k=k, routed=True)
        torch.nn.init.normal_(layer.router.weight)
        with torch.no_grad():
            y = layer(x)
            logits = layer.router(x)
        for t in range(5):
            top = logits[t].topk(k).indices
            p = torch.softmax(logits[t][top], -1) if k == 2 else torch.softmax(logits[t], -1)[top]
            expect = base(x[t]) + sum(pi * (deltas[int(i)] @ x[t]) for pi, i in zip(p, top))
            assert torch.allclose(y[t], expect, atol=1e-5)
        assert len(list(layer.parameters())) == 3  # base weight, bias, router; experts are buffers
    layer = MoeLoraLinear(base, fs, top_k=1, routed=True)
    torch.nn.init.normal_(layer.router.weight)
    layer(x).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def _sampled_examples(tiny_dir, adapter_dir, n=24, prompt=6, length=16):
    """Token sequences sampled from the base model with one adapter (answer tokens labelled)."""
    model = _load(tiny_dir)
    attach_moe(model, [read_adapter(adapter_dir)], top_k=1, routed=[])  # one expert, weight 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (n, prompt), generator=g)
    with torch.no_grad():
        for _ in range(length):
            p = torch.softmax(model(input_ids=ids).logits[:, -1], -1)
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    return [{"input_ids": x, "labels": [-100] * prompt + x[prompt:]} for x in ids.tolist()]


@pytest.fixture(scope="module")
def strong(tiny_dir, experts):
    """Two experts with strong, different lm_head/down_proj LoRAs, and data sampled from expert 1."""
    model = _load(tiny_dir)
    paths = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        mods = {}
        for name, mod in model.named_modules():
            if name == "lm_head" or name.endswith("down_proj"):
                s = 0.35 if name == "lm_head" else 0.1
                mods[name] = LoraFactors(torch.randn(4, mod.in_features, generator=g) * s,
                                         torch.randn(mod.out_features, 4, generator=g) * s, 2.0)
        paths.append(write_adapter(mods, experts["root"] / f"strong{seed}", base_model="tiny"))
    return {"paths": paths, "examples": _sampled_examples(tiny_dir, paths[1])}


def test_routers_train_experts_unchanged_and_save_load_same(tiny_dir, experts, strong):
    from lorasoups.train.loop import eval_loss, split_examples
    from lorasoups.train.data import collate

    before = [sha256_dir(p) for p in strong["paths"]]
    out = experts["root"] / "moe_trained"
    train_moe(str(tiny_dir), strong["paths"], strong["examples"], out, top_k=1, learning_rate=0.05, max_steps=25, batch_size=4,
              val_fraction=0.25, seed=0, precision="fp32", device="cpu", progress=False)
    assert [sha256_dir(p) for p in strong["paths"]] == before
    cfg = read_moe_config(out)
    t = cfg["training"]
    # routers learned to send tokens to the expert that generated the data: the loss falls
    assert t["val_loss_after"] < t["val_loss_before"] - 0.1, t
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 25 and sum(r["ce"] for r in log[-5:]) < sum(r["ce"] for r in log[:5])
    assert is_moe_folder(out) and not is_moe_folder(strong["paths"][0])
    assert cfg["routed_modules"] == cfg["modules"] and cfg["top_k"] == 1
    assert [e["sha256"]["adapter_model.safetensors"] for e in cfg["experts"]] == \
        [b["adapter_model.safetensors"] for b in before]
    # load back: the held-out loss recomputed on the loaded model equals the one measured in memory
    model = load_moe_model(_load(tiny_dir), out)
    assert not any(p.requires_grad for p in model.parameters())
    _, val = split_examples(list(strong["examples"]), 0.25, 0)
    ce = eval_loss(model, val, pad_token_id=259, batch_size=4)
    assert ce == pytest.approx(t["val_loss_after"], abs=1e-5)


def test_save_load_same_logits_and_checksums(tiny_dir, experts, input_ids):
    paths = experts["paths"]
    recs = [read_adapter(p) for p in paths]
    model = _load(tiny_dir)
    layers = attach_moe(model, recs, top_k=2, routed=[m for m in sorted({m for r in recs for m in r.modules}) if ".layers.1." in m])
    init_routers(layers, 0.5, seed=4)
    with torch.no_grad():
        ref = model(input_ids=input_ids).logits
    out = experts["root"] / "moe_saved"
    save_moe_folder(out, layers, paths, base_model="tiny", top_k=2, router_layers=[1])
    with pytest.raises(FileExistsError):
        save_moe_folder(out, layers, paths, base_model="tiny", top_k=2)
    got = load_moe_model(_load(tiny_dir), out)
    with torch.no_grad():
        assert torch.equal(got(input_ids=input_ids).logits, ref)
    # experts found by their path relative to the MoE folder when moved together
    moved = experts["root"] / "moved"
    moved.mkdir()
    shutil.copytree(out, moved / "moe")
    for p in paths:
        shutil.copytree(p, moved / p.name)
    cfg = json.loads((moved / "moe" / "moe_config.json").read_text())
    for e in cfg["experts"]:
        e["path"] = str(experts["root"] / "does-not-exist")
    (moved / "moe" / "moe_config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        assert torch.equal(load_moe_model(_load(tiny_dir), moved / "moe")(input_ids=input_ids).logits, ref)
    # a changed expert is detected by its checksum
    f = moved / paths[1].name / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="SHA-256"):
        load_moe_model(_load(tiny_dir), moved / "moe")
    with pytest.raises(ConfigError):
        load_moe_model(_load(tiny_dir), paths[0])


def test_cli_moe(tiny_dir, experts, capsys):
    from lorasoups.cli.main import main

    data = experts["root"] / "mix.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and 1", "input": "", "output": f"{i + 1}"} for i in range(10)]))
    out = experts["root"] / "cli_moe"
    rc = main(["moe", "--base", str(tiny_dir), "--adapters", *map(str, experts["paths"][:2]), "--data", str(data),
               "--fraction", "1", "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--router-layers", "0",
               "--top-k", "1", "--precision", "fp32", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    cfg = read_moe_config(out)
    assert cfg["router_layers"] == [0] and all(".layers.0." in m for m in cfg["routed_modules"])
    assert len(cfg["modules"]) == 14 and len(cfg["routed_modules"]) == 7
    assert "2 experts" in capsys.readouterr().out
    assert main(["moe", "--base", str(tiny_dir), "--adapters", str(experts["paths"][0]), "--data", str(data),
                 "--out", str(experts["root"] / "x"), "--quiet"]) == 2
    assert "at least 2" in capsys.readouterr().err
