"""The merge driver and CLI on the tiny model: PEFT loading, --full, checks, atomic outputs."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorasoups.cli.main import main
from lorasoups.errors import AdapterError, ConfigError, LorasoupsError
from lorasoups.io.adapters import read_adapter, write_adapter
from lorasoups.merge.driver import get_merge_method, merge_adapters, merge_module, resolve_params
from lorasoups.provenance import sha256_dir
from lorasoups.testing import base_plus_delta_logits, make_peft_adapter, peft_logits
from lorasoups.types import LoraFactors

# ranks 8 and 16, different alphas, rsLoRA vs plain, partly disjoint target modules
SPECS = {
    "a": dict(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj", "down_proj"), seed=1),
    "b": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=("q_proj", "k_proj", "up_proj"), seed=2),
    "c": dict(r=4, lora_alpha=4, target_modules=("o_proj", "gate_proj"), seed=3),  # disjoint from a
}


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {k: make_peft_adapter(tiny_dir, root / k, **v) for k, v in SPECS.items()}


def summed_deltas(paths, weights):
    out: dict[str, torch.Tensor] = {}
    for p, w in zip(paths, weights):
        for m, f in read_adapter(p).modules.items():
            out[m] = out.get(m, 0) + w * f.delta()
    return out


def assert_same_products(out_dir, deltas, atol=1e-5):
    rec = read_adapter(out_dir)
    assert set(rec.modules) == set(deltas)
    for m, d in deltas.items():
        assert (rec.modules[m].delta() - d).abs().max() <= atol, m


@pytest.mark.parametrize("method,params,lam", [("linear", {}, 1.0), ("concat", {}, 1.0),
                                               ("task_arithmetic", {"scaling_coef": 0.5}, 0.5)])
def test_exact_merge_loads_in_peft(tiny_dir, adapters, tmp_path, input_ids, method, params, lam):
    paths = [adapters["a"], adapters["b"], adapters["c"]]
    w = [0.7, -0.3, 1.2]
    before = {p: sha256_dir(p) for p in paths}
    out = merge_adapters(paths, method, tmp_path / "out", weights=w, params=params)
    assert all(sha256_dir(p) == before[p] for p in paths)  # inputs unchanged
    deltas = {m: lam * d for m, d in summed_deltas(paths, w).items()}
    assert_same_products(out, deltas)
    rec = read_adapter(out)
    assert rec.modules["model.layers.0.self_attn.q_proj"].r == 8 + 16  # rank-sum
    got = peft_logits(tiny_dir, out, input_ids)
    want = base_plus_delta_logits(tiny_dir, deltas, input_ids)
    base = peft_logits(tiny_dir, None, input_ids)
    assert (want - base).abs().max() > 1e-3
    assert (got - want).abs().max() <= 1e-4
    info = json.loads((out / "merge_info.json").read_text())
    assert info["method"] == method and info["weights"] == w and info["params"] == params
    assert [i["sha256"] for i in info["inputs"]] == [before[p] for p in paths]
    assert info["inputs"][2]["missing_modules"] > 0 and "torch" in info["provenance"]["package_versions"]


def test_single_adapter_and_negation_through_driver(adapters, tmp_path):
    a = adapters["a"]
    ref = {m: f.delta() for m, f in read_adapter(a).modules.items()}
    for method in ("linear", "ties", "dare_ties", "magnitude_prune"):
        params = {k: v for k, v in {"density": 1.0, "trim_density": 1.0}.items() if k in get_merge_method(method).params}
        out = merge_adapters([a], method, tmp_path / f"{method}_one", params=params)
        assert_same_products(out, ref)  # dense methods: SVD step at the input rank is lossless here
        neg = merge_adapters([a], method, tmp_path / f"{method}_neg", weights=[-1.0], params=params)
        assert_same_products(neg, {m: -d for m, d in ref.items()})


def test_ties_svd_rank_and_errors(adapters, tmp_path):
    paths = [adapters["a"], adapters["b"]]
    info_ties = get_merge_method("ties")
    p = resolve_params(info_ties, {"density": 0.5})
    out = merge_adapters(paths, "ties", tmp_path / "t", weights=[1.0, 0.5], params=p, rank=6)
    rec_in = [read_adapter(x) for x in paths]
    mi = json.loads((out / "merge_info.json").read_text())
    errs = mi["svd"]["rel_fro_error"]
    assert mi["svd"]["max_rel_fro_error"] == max(errs.values()) and mi["rank"] == 6
    rec = read_adapter(out)
    for m, f in rec.modules.items():
        facs = [r.modules.get(m) for r in rec_in]
        dense = merge_module(info_ties, facs, [1.0, 0.5], p, m)
        assert f.r == 6
        S = torch.linalg.svdvals(dense.double())
        expected = float(S[6:].norm() / S.norm())
        assert abs(errs[m] - expected) < 1e-5
        assert abs(float((dense - f.delta()).norm() / dense.norm()) - expected) < 1e-4
    # full rank: no error
    full_rank = merge_adapters(paths, "ties", tmp_path / "t64", params=p, rank=64)
    assert json.loads((full_rank / "merge_info.json").read_text())["svd"]["max_rel_fro_error"] < 1e-5


def test_full_model(tiny_dir, adapters, tmp_path, input_ids):
    from transformers import AutoModelForCausalLM

    paths = [adapters["a"], adapters["b"]]
    info = get_merge_method("ties")
    p = resolve_params(info, {"density": 0.3})
    out = merge_adapters(paths, "ties", tmp_path / "full", weights=[0.8, 0.6], params=p, full=True)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file() and (out / "merge_info.json").is_file()
    recs = [read_adapter(x) for x in paths]
    mods = sorted(set(recs[0].modules) | set(recs[1].modules))
    deltas = {m: merge_module(info, [r.modules.get(m) for r in recs], [0.8, 0.6], p, m) for m in mods}
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=input_ids).logits
    want = base_plus_delta_logits(tiny_dir, deltas, input_ids)
    assert (got - want).abs().max() <= 1e-4
    # exact linear --full equals the rank-sum adapter loaded by PEFT
    lin_full = merge_adapters(paths, "linear", tmp_path / "lfull", weights=[0.8, -0.6], full=True)
    lin = merge_adapters(paths, "linear", tmp_path / "lad", weights=[0.8, -0.6])
    m2 = AutoModelForCausalLM.from_pretrained(str(lin_full), dtype=torch.float32).eval()
    with torch.no_grad():
        assert (m2(input_ids=input_ids).logits - peft_logits(tiny_dir, lin, input_ids)).abs().max() <= 1e-4
    with pytest.raises(ConfigError, match="exclude"):
        merge_adapters(paths, "linear", tmp_path / "x", rank=4, full=True)


def _custom(path, modules, base_model="base-x", dtype=torch.float32):
    return write_adapter(modules, path, base_model=base_model, dtype=dtype)


def _f(d_out, d_in, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(A=torch.randn(r, d_in, generator=g), B=torch.randn(d_out, r, generator=g), scale=1.0)


def test_refuses_shape_conflict_and_other_base(tmp_path):
    a = _custom(tmp_path / "a", {"layers.0.q": _f(8, 6)})
    b = _custom(tmp_path / "b", {"layers.0.q": _f(4, 6)})
    with pytest.raises(AdapterError) as e:
        merge_adapters([a, b], "linear", tmp_path / "o")
    msg = str(e.value)
    assert "layers.0.q" in msg and "(8, 6)" in msg and "(4, 6)" in msg and str(b) in msg
    c = _custom(tmp_path / "c", {"layers.0.q": _f(8, 6, seed=1)}, base_model="base-y")
    with pytest.raises(AdapterError, match="different base models") as e:
        merge_adapters([a, c], "linear", tmp_path / "o")
    assert str(c) in str(e.value) and "base-y" in str(e.value)
    out = merge_adapters([a, c], "linear", tmp_path / "o", allow_different_base=True)
    assert out.is_dir()
    assert not (tmp_path / "o2").exists()


def test_dare_independent_of_module_order_and_presence(tmp_path):
    fa, fb, fc = _f(8, 6, seed=1), _f(8, 6, seed=2), _f(5, 6, seed=3)
    full = _custom(tmp_path / "full", {"layers.0.a": fa, "layers.0.b": fb, "layers.1.c": fc})
    part = _custom(tmp_path / "part", {"layers.0.b": fb})
    params = {"density": 0.5, "seed": 11}
    o1 = read_adapter(merge_adapters([full], "dare_linear", tmp_path / "o1", params=params, rank=6))
    o2 = read_adapter(merge_adapters([part], "dare_linear", tmp_path / "o2", params=params, rank=6))
    assert torch.allclose(o1.modules["layers.0.b"].delta(), o2.modules["layers.0.b"].delta(), atol=1e-6)
    assert (o1.modules["layers.0.b"].delta() - fb.delta()).abs().max() > 0.1  # entries were dropped
    o3 = read_adapter(merge_adapters([part], "dare_linear", tmp_path / "o3", params={"density": 0.5, "seed": 12}, rank=6))
    assert not torch.allclose(o3.modules["layers.0.b"].delta(), o2.modules["layers.0.b"].delta())


def test_atomic_outputs_and_inputs_unchanged(adapters, tmp_path):
    paths = [adapters["a"], adapters["b"]]
    before = {p: sha256_dir(p) for p in paths}
    out = tmp_path / "out"
    merge_adapters(paths, "linear", out)
    first = sha256_dir(out)
    with pytest.raises(FileExistsError):
        merge_adapters(paths, "ties", out)
    assert sha256_dir(out) == first
    # a failure in the middle of a merge (NaN in a later module) leaves no output and no temp folder
    bad = tmp_path / "bad"
    mods = {m: f for m, f in read_adapter(paths[0]).modules.items()}
    last = sorted(mods)[-1]
    mods[last] = LoraFactors(A=torch.full_like(mods[last].A, float("nan")), B=mods[last].B, scale=mods[last].scale)
    from lorasoups.io.adapters import save_adapter_files

    bad.mkdir()
    save_adapter_files(bad, mods, base_model=read_adapter(paths[0]).base_model)
    with pytest.raises(AdapterError, match="NaN"):
        merge_adapters([paths[0], bad], "ties", tmp_path / "never")
    with pytest.raises(AdapterError, match="NaN"):
        merge_adapters([paths[0], bad], "linear", out, overwrite=True)
    assert sha256_dir(out) == first
    assert not (tmp_path / "never").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp leftovers
    with pytest.raises(LorasoupsError, match="overwrite input"):
        merge_adapters(paths, "linear", paths[0], overwrite=True)
    merge_adapters(paths, "ties", out, overwrite=True)
    assert sha256_dir(out) != first
    assert all(sha256_dir(p) == before[p] for p in paths)


def test_low_precision_inputs_and_output_dtype(tmp_path):
    mods = {"layers.0.q": _f(16, 12, r=4, seed=5), "layers.0.v": _f(16, 12, r=4, seed=6)}
    h = _custom(tmp_path / "h", mods, dtype=torch.bfloat16)
    out = merge_adapters([h, h], "ties", tmp_path / "o", params={"density": 1.0}, rank=4, dtype="bfloat16")
    raw = load_file(str(out / "adapter_model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in raw.values())
    rec_in = read_adapter(h)
    rec = read_adapter(out)
    for m in mods:
        d = rec_in.modules[m].delta()  # ties of two equal adapters with weights 1 = the adapter itself
        assert (rec.modules[m].delta() - d).abs().max() <= 2e-2 * d.abs().max()


def test_cli_merge_and_ls(adapters, tmp_path, capsys):
    a, b = str(adapters["a"]), str(adapters["b"])
    rc = main(["merge", "--method", "ties", "--adapters", a, b, "--weights", "0.7", "-0.3",
               "--param", "density=0.5", "--rank", "4", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "o" / "merge_info.json").read_text())
    assert rc == 0 and "max relative Frobenius error" in out and info["svd"]["max_module"] in out
    # one summary line, not one per module; a warning only when the SVD step loses much of ΔW
    assert out.count("max relative Frobenius error") == 1
    assert ("warning: the SVD step" in out) == (info["svd"]["max_rel_fro_error"] > 0.1)
    assert info["params"] == {"density": 0.5} and info["weights"] == [0.7, -0.3] and info["rank"] == 4
    assert math.isclose(info["svd"]["max_rel_fro_error"], max(info["svd"]["rel_fro_error"].values()))
    rc = main(["merge", "--method", "ties", "--adapters", a, b, "--param", "densty=0.5", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'density'" in err and not (tmp_path / "x").exists()
    rc = main(["merge", "--method", "tie", "--adapters", a, "--out", str(tmp_path / "x")])
    assert rc == 2 and "did you mean 'ties'" in capsys.readouterr().err
    rc = main(["merge", "--method", "linear", "--adapters", a, b, "--weights", "1", "--out", str(tmp_path / "x")])
    assert rc == 2 and "2 adapters" in capsys.readouterr().err
    # method options as flags from the method's spec, the same as --param
    rc = main(["merge", "--method", "ties", "--adapters", a, b, "--weights", "0.7", "-0.3", "--density", "0.5",
               "--rank", "4", "--out", str(tmp_path / "flags")])
    assert rc == 0
    for m, f in read_adapter(tmp_path / "flags").modules.items():
        assert torch.allclose(f.delta(), read_adapter(tmp_path / "o").modules[m].delta(), atol=1e-6)
    rc = main(["merge", "--method", "linear", "--adapters", a, b, "--density", "0.5", "--out", str(tmp_path / "x")])
    assert rc == 2 and "unrecognized arguments: --density 0.5 (options of linear: none)" in capsys.readouterr().err
    rc = main(["merge", "--method", "dare_linear", "--adapters", a, b, "--drop-rate", "0.5", "--out", str(tmp_path / "x")])
    assert "--drop-rate was renamed to --density (the kept fraction: density = 1 - drop_rate)" in capsys.readouterr().err
    rc = main(["merge", "--method", "ties", "--adapters", a, b, "--density", "2", "--out", str(tmp_path / "x")])
    assert rc == 2 and "density: input should be less than or equal to 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["ls", "methods"]) == 0
    table = capsys.readouterr().out
    for line_start, needle in [("ties ", "density=0.2"), ("dare_linear ", "density"),
                               ("task_arithmetic ", "scaling_coef=1.0"), ("linear ", "Ilharco")]:
        line = next(ln for ln in table.splitlines() if ln.startswith(line_start))
        assert needle in line


def test_pickled_inputs_need_flag(tmp_path):
    src = _custom(tmp_path / "s", {"layers.0.q": _f(8, 6, seed=4)})
    pk = tmp_path / "pk"
    pk.mkdir()
    (pk / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    torch.save(load_file(str(src / "adapter_model.safetensors")), pk / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickled"):
        merge_adapters([src, pk], "linear", tmp_path / "o")
    out = merge_adapters([src, pk], "linear", tmp_path / "o", weights=[1.0, -1.0], allow_pickle=True)
    assert read_adapter(out).modules["layers.0.q"].delta().abs().max() <= 1e-6
