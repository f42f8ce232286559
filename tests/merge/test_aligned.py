"""KnOTS and Core Space merging (aligned-basis merges): identities, bases, a case where the aligned
basis must beat raw-ΔW TIES, and the driver on the tiny model. Products B·A are compared, never factors."""

import json
import math

import pytest
import torch

from lorasoups.errors import ConfigError
from lorasoups.io.adapters import read_adapter
from lorasoups.merge.core_space import core_bases, core_project, core_space
from lorasoups.merge.driver import get_merge_method, merge_adapters, resolve_params
from lorasoups.merge.knots import knots, knots_svd
from lorasoups.merge.ties import ties
from lorasoups.testing import base_plus_delta_logits, make_peft_adapter, peft_logits
from lorasoups.types import LoraFactors

ALIGNED = ["knots", "core_space"]
FNS = {"knots": knots, "core_space": core_space}
# the inner merges in settings that lose nothing (no trim, no drop)
LOSSLESS_INNER = [("linear", {}), ("ties", {"density": 1.0}), ("dare_ties", {"density": 1.0, "trim_density": 1.0}),
                  ("dare_linear", {"density": 1.0})]


def rel(x, y):
    return float((x - y).norm() / y.norm())


def rand_factors(r, d_out=24, d_in=20, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(A=torch.randn(r, d_in, generator=g), B=torch.randn(d_out, r, generator=g), scale=scale)


@pytest.mark.parametrize("name", ALIGNED)
def test_linear_inner_is_exact_weighted_sum(name):
    # mixed ranks, plain and rsLoRA-style scales, a negative weight, Σr = 26 > d_in = 20
    fs = [rand_factors(4, scale=2.0, seed=1), rand_factors(8, scale=8 / math.sqrt(8), seed=2),
          rand_factors(14, scale=0.25, seed=3)]
    w = [0.7, -0.3, 1.2]
    want = sum(wi * f.delta() for wi, f in zip(w, fs))
    got = FNS[name](fs, w, inner="linear")
    assert got.r <= 4 + 8 + 14 and got.scale == 1.0 and got.A.dtype == torch.float32
    assert rel(got.delta(), want) <= 1e-5
    assert rel(got.delta(), 0.7 * fs[0].delta()) > 0.1  # the other adapters matter


@pytest.mark.parametrize("name", ALIGNED)
@pytest.mark.parametrize("inner,params", LOSSLESS_INNER)
def test_one_adapter_comes_back_unchanged(name, inner, params):
    f = rand_factors(6, seed=4)
    got = FNS[name]([f], [1.0], inner=inner, **params)
    assert got.r == 6  # exact rank: a rank-6 ΔW stays rank 6
    assert rel(got.delta(), f.delta()) <= 1e-5
    # and with an absent second adapter (None) or one whose weight is 0
    assert rel(FNS[name]([None, f], [3.0, 1.0], inner=inner, **params).delta(), f.delta()) <= 1e-5
    assert rel(FNS[name]([f, rand_factors(3, seed=5)], [1.0, 0.0], inner=inner, **params).delta(), f.delta()) <= 1e-5


@pytest.mark.parametrize("name", ALIGNED)
@pytest.mark.parametrize("inner,params", [("linear", {}), ("ties", {"density": 0.5}),
                                          ("dare_ties", {"density": 0.7, "seed": 4})])
def test_absent_module_contributes_nothing(name, inner, params):
    """None (module absent) = the adapter left out, also with trimming and random drops; with the
    linear inner merge it also equals an adapter whose ΔW is 0 (B = 0)."""
    f1, f2 = rand_factors(4, seed=6), rand_factors(8, seed=7)
    a = FNS[name]([f1, None, f2], [0.6, 1.0, 0.9], inner=inner, **params).delta()
    b = FNS[name]([f1, f2], [0.6, 0.9], inner=inner, **params).delta()
    assert torch.equal(a, b)
    assert rel(a, 0.6 * f1.delta() + 0.9 * f2.delta()) > (1e-3 if inner != "linear" else -1)
    if inner == "linear":
        zero = LoraFactors(A=torch.randn(5, 20), B=torch.zeros(24, 5), scale=1.0)
        c = FNS[name]([f1, zero, f2], [0.6, 1.0, 0.9], inner=inner, **params).delta()
        assert rel(a, 0.6 * f1.delta() + 0.9 * f2.delta()) <= 1e-5 and rel(c, a) <= 1e-5


def test_knots_svd_matches_dense_svd_of_concatenation():
    fs = [rand_factors(3, seed=8), rand_factors(5, scale=1.5, seed=9)]
    concat = torch.cat([f.B.double() @ f.A.double() * f.scale for f in fs], dim=1)  # (d_out, n·d_in)
    U, S, Vhs = knots_svd(fs)
    assert U.shape == (24, 8) and S.shape == (8,) and [v.shape for v in Vhs] == [(8, 20), (8, 20)]
    assert torch.allclose(S, torch.linalg.svdvals(concat)[:8], rtol=1e-9)
    assert torch.allclose(U.T @ U, torch.eye(8, dtype=torch.float64), atol=1e-12)
    Vh = torch.cat(Vhs, dim=1)  # (k, n·d_in): orthonormal rows
    assert torch.allclose(Vh @ Vh.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    for f, Vh_i in zip(fs, Vhs):  # ΔW_i = U Σ V_iᵀ
        assert rel((U * S) @ Vh_i, f.delta().double()) <= 1e-6


def test_core_space_projection_is_lossless():
    fs = [rand_factors(3, seed=10), rand_factors(9, seed=11), rand_factors(2, scale=3.0, seed=12)]
    U_B, V_A = core_bases(fs)
    assert U_B.shape == (24, 14) and V_A.shape == (20, 14)
    assert torch.allclose(U_B.T @ U_B, torch.eye(14, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(V_A.T @ V_A, torch.eye(14, dtype=torch.float64), atol=1e-12)
    for f in fs:
        M = core_project(f, U_B, V_A)  # (k_B, k_A)
        assert M.shape == (14, 14)
        assert rel(U_B @ M @ V_A.T, f.delta().double()) <= 1e-6
    # U_B spans the stacked B's left singular space (the paper's reference basis)
    B_stack = torch.cat([f.B.double() for f in fs], dim=1)
    U_ref = torch.linalg.svd(B_stack, full_matrices=False)[0]
    assert torch.allclose(U_B @ U_B.T, U_ref @ U_ref.T, atol=1e-10)


def rotated_pair(d_out=48, d_in=40, r=4, seed=0):
    """Two rank-r adapters whose ΔW share one 2r-dimensional subspace pair (U, V) drawn at random,
    i.e. rotated away from the coordinate axes so both ΔW are dense: ΔW_1 = U_1 S_1 V_1ᵀ,
    ΔW_2 = U_2 S_2 V_2ᵀ with [U_1 U_2] = U, [V_1 V_2] = V. The factors are mixed by a random
    invertible G_i (B_i = U_i S_i G_i, A_i = G_i⁻¹ V_iᵀ) so they are not singular vectors themselves.

    Returns: factors, and X_i = V_i (d_in, r), an orthonormal basis of adapter i's input subspace.
    """
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(d_out, 2 * r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(d_in, 2 * r, generator=g, dtype=torch.float64))[0]
    fs, X = [], []
    for i in range(2):
        s = torch.linspace(3.0, 1.0, r, dtype=torch.float64) * (1.0 + 0.15 * i)
        G = torch.randn(r, r, generator=g, dtype=torch.float64) + 3 * torch.eye(r, dtype=torch.float64)
        Ui, Vi = U[:, i * r:(i + 1) * r], V[:, i * r:(i + 1) * r]
        fs.append(LoraFactors(A=torch.linalg.solve(G, Vi.T).float(), B=((Ui * s) @ G).float(), scale=0.5))
        X.append(Vi.float())
    return fs, X


@pytest.mark.parametrize("name", ALIGNED)
@pytest.mark.parametrize("density", [0.5, 0.3])
def test_ties_in_aligned_basis_keeps_more_of_each_update(name, density):
    """TIES on raw ΔW: the dense entries of ΔW_1 and ΔW_2 collide (trim and sign election mix them).
    In the aligned basis the two updates occupy different coordinates, so TIES keeps each one.
    Error of adapter i: ‖(ΔW_merged − ΔW_i) X_i‖ / ‖ΔW_i X_i‖, X_i its own input subspace."""
    fs, X = rotated_pair()
    D = [f.delta() for f in fs]
    raw = ties(torch.stack(D), torch.ones(2), density=density)
    aligned = FNS[name](fs, [1.0, 1.0], inner="ties", density=density).delta()
    for i in range(2):
        err_raw = float(((raw - D[i]) @ X[i]).norm() / (D[i] @ X[i]).norm())
        err_aligned = float(((aligned - D[i]) @ X[i]).norm() / (D[i] @ X[i]).norm())
        assert err_raw > 0.2  # raw TIES loses a lot here ...
        assert err_aligned < 0.5 * err_raw and err_aligned < 0.1, (i, err_aligned, err_raw)  # ... aligned does not


def test_params_validation():
    for name in ALIGNED:
        info = get_merge_method(name)
        assert info.space == "aligned" and info.params["inner"] == "ties"
        p = resolve_params(info, {"inner": "dare_ties", "density": "0.5", "trim_density": "0.3", "seed": "2"})
        assert (p["density"], p["trim_density"], p["seed"]) == (0.5, 0.3, 2)
        f = [rand_factors(4, seed=13)]
        for bad, needle in [({"inner": "tie"}, "'ties'"), ({"inner": "linear", "density": 0.5}, "'linear' has no option 'density'"),
                            ({"inner": "ties", "trim_density": 0.5}, "'ties' has no option 'trim_density'"),
                            ({"inner": "ties", "density": 0.0}, "density"), ({"inner": "dare_linear", "density": 1.5}, "density"),
                            ({"inner": "dare_linear", "drop_rate": 0.5}, "density = 1 - drop_rate")]:
            with pytest.raises(ConfigError, match=needle):
                resolve_params(info, bad)
        with pytest.raises(ValueError, match="shapes differ"):
            FNS[name]([f[0], rand_factors(2, d_out=7)], [1.0, 1.0])


# ------------------------------------------------------------------------------ driver, tiny model

SPECS = {  # ranks 8 / 16 / 4, rsLoRA vs plain, partly disjoint target modules
    "a": dict(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj", "down_proj"), seed=1),
    "b": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=("q_proj", "k_proj", "up_proj"), seed=2),
    "c": dict(r=4, lora_alpha=4, target_modules=("o_proj", "gate_proj", "q_proj"), seed=3),
}


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned_adapters")
    return [make_peft_adapter(tiny_dir, root / k, **v) for k, v in SPECS.items()]


@pytest.mark.parametrize("name", ALIGNED)
def test_driver_linear_inner_mixed_ranks_disjoint_modules(name, tiny_dir, adapters, tmp_path, input_ids):
    w = [0.7, -0.3, 1.2]
    want: dict[str, torch.Tensor] = {}
    for p, wi in zip(adapters, w):
        for m, f in read_adapter(p).modules.items():
            want[m] = want.get(m, 0) + wi * f.delta()  # absent module = ΔW 0
    out = merge_adapters(adapters, name, tmp_path / "out", weights=w, params={"inner": "linear"})
    rec = read_adapter(out)
    assert set(rec.modules) == set(want)
    for m, d in want.items():
        assert rel(rec.modules[m].delta(), d) <= 1e-5, m
    assert rec.modules["model.layers.0.self_attn.q_proj"].r == 8 + 16 + 4  # exact rank, no SVD step
    info = json.loads((out / "merge_info.json").read_text())
    assert info["space"] == "aligned" and info["params"]["inner"] == "linear" and info["svd"] is None
    got = peft_logits(tiny_dir, out, input_ids)  # a standard PEFT LoRA
    ref = base_plus_delta_logits(tiny_dir, want, input_ids)
    assert (got - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ALIGNED)
def test_driver_ties_inner_and_rank(name, adapters, tmp_path):
    out = merge_adapters(adapters[:2], name, tmp_path / "ties", params={"inner": "ties", "density": 0.5})
    q = read_adapter(out).modules["model.layers.0.self_attn.q_proj"]
    assert q.r <= 8 + 16
    # --rank K: the SVD step on the exact factors, with its error recorded
    low = merge_adapters(adapters[:2], name, tmp_path / "r4", params={"inner": "ties", "density": 0.5}, rank=4)
    info = json.loads((low / "merge_info.json").read_text())
    q4 = read_adapter(low).modules["model.layers.0.self_attn.q_proj"]
    assert q4.r == 4 and 0 < info["svd"]["rel_fro_error"]["model.layers.0.self_attn.q_proj"] < 1
    err = info["svd"]["rel_fro_error"]["model.layers.0.self_attn.q_proj"]
    assert abs(rel(q4.delta(), q.delta()) - err) <= 1e-4  # the reported error is the real one
