"""Merge methods as pure functions on random factors (no model). Compare products B·A, never factors."""

import math

import pytest
import torch

from lorasoups.errors import AdapterError, ConfigError
from lorasoups.merge.concat import concat_factors
from lorasoups.merge.driver import get_merge_method, merge_methods, merge_module, module_seed, resolve_params
from lorasoups.merge.svd import truncate_delta, truncate_factors
from lorasoups.types import LoraFactors

D_OUT, D_IN = 12, 10
MERGE_METHODS = sorted(merge_methods())
# parameter values that make every method lossless (no trim, no drop, λ = 1)
LOSSLESS = {"density": 1.0, "trim_density": 1.0, "scaling_coef": 1.0}


def rand_factors(r=4, scale=0.5, seed=0, d_out=D_OUT, d_in=D_IN, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed % (1 << 63))
    return LoraFactors(A=torch.randn(r, d_in, generator=g).to(dtype), B=torch.randn(d_out, r, generator=g).to(dtype),
                       scale=scale)


def lossless(name, inner=None):
    """(info, lossless params); methods with an ``inner`` merge get the inner method's lossless values."""
    info = get_merge_method(name)
    if "inner" not in info.params:
        return info, resolve_params(info, {k: v for k, v in LOSSLESS.items() if k in info.params})
    inner = inner or info.params["inner"]
    keys = get_merge_method(inner).params
    return info, resolve_params(info, {"inner": inner, **{k: v for k, v in LOSSLESS.items() if k in keys and k != "seed"}})


def contract_cases():
    """(method, inner) pairs: every registered merge method; aligned methods once per inner merge."""
    from lorasoups.merge.aligned import INNER_MERGES

    cases = []
    for name in MERGE_METHODS:
        if "inner" in get_merge_method(name).params:
            cases += [(name, inner) for inner in INNER_MERGES]
        else:
            cases.append((name, None))
    return cases


def as_delta(result):
    return result.delta() if isinstance(result, LoraFactors) else result


def run(name, factors, weights, params=None, module="m"):
    info = get_merge_method(name)
    p = lossless(name)[1] if params is None else resolve_params(info, params)
    return as_delta(merge_module(info, factors, weights, p, module))


def test_registry_has_all_methods():
    assert set(MERGE_METHODS) >= {"linear", "task_arithmetic", "concat", "ties", "dare_linear", "dare_ties",
                                  "magnitude_prune", "linear_factors", "knots", "core_space"}


@pytest.mark.parametrize("name,inner", contract_cases())
def test_contract(name, inner):
    """Every registered merge method (aligned ones with each inner merge): identities, shape/dtype,
    missing modules, determinism."""
    info, p = lossless(name, inner)
    assert info.kind == "merge" and info.space in ("concat", "delta", "factors", "aligned") and info.reference
    f1, f2, f3 = rand_factors(seed=1), rand_factors(seed=2, scale=2.0), rand_factors(seed=3, scale=0.25)
    d1 = f1.delta()
    assert d1.abs().max() > 0.1
    one = as_delta(merge_module(info, [f1], [1.0], p, "m"))
    assert one.shape == (D_OUT, D_IN) and one.dtype == torch.float32
    assert (one - d1).abs().max() <= 1e-6
    first = as_delta(merge_module(info, [f1, f2, f3], [1.0, 0.0, 0.0], p, "m"))
    assert (first - d1).abs().max() <= 1e-6
    neg = as_delta(merge_module(info, [f1], [-1.0], p, "m"))
    if info.space == "factors":
        # documented: weights enter squared, so -1 does NOT negate
        assert (neg - d1).abs().max() <= 1e-6
    else:
        assert (neg + d1).abs().max() <= 1e-6
    # a missing module (None) contributes exactly what an all-zero adapter would: nothing
    with_none = as_delta(merge_module(info, [f1, None, f2], [0.5, 1.0, 0.7], p, "m"))
    without = as_delta(merge_module(info, [f1, f2], [0.5, 0.7], p, "m"))
    assert (with_none - without).abs().max() <= 1e-6
    # default parameters: deterministic, right shape, finite; fp16/bf16 inputs give fp32 results
    pd = resolve_params(info, {"inner": inner} if inner else {})
    h1, h2 = rand_factors(seed=1, dtype=torch.float16), rand_factors(seed=2, dtype=torch.bfloat16)
    a = as_delta(merge_module(info, [h1, h2], [0.6, 0.4], pd, "layers.0.q"))
    b = as_delta(merge_module(info, [h1, h2], [0.6, 0.4], pd, "layers.0.q"))
    assert a.dtype == torch.float32 and a.shape == (D_OUT, D_IN) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    with pytest.raises(ConfigError):
        merge_module(info, [f1, f2], [1.0], p, "m")


@pytest.mark.parametrize("name", ["linear", "concat", "task_arithmetic"])
def test_exact_methods_no_cross_terms(name):
    f1 = rand_factors(r=8, scale=16 / 8, seed=4)
    f2 = rand_factors(r=16, scale=8 / math.sqrt(16), seed=5)  # rsLoRA-style scale, other rank
    got = run(name, [f1, f2], [0.7, -0.3])
    want = 0.7 * f1.delta() - 0.3 * f2.delta()
    assert (got - want).abs().max() <= 1e-5
    assert (got - (0.7 * f1.delta())).abs().max() > 0.1  # the second adapter matters


def test_concat_factors_api():
    f1, f2 = rand_factors(r=2, seed=6), rand_factors(r=5, scale=3.0, seed=7)
    c = concat_factors([f1, None, f2], [0.5, 9.0, 2.0])
    assert c.r == 7 and c.scale == 1.0
    assert (c.delta() - (0.5 * f1.delta() + 2.0 * f2.delta())).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="shapes differ"):
        concat_factors([f1, rand_factors(d_out=7)], [1, 1])
    with pytest.raises(ValueError):
        concat_factors([None, None], [1, 1])


def test_task_arithmetic_scaling():
    f1, f2 = rand_factors(seed=8), rand_factors(seed=9, scale=3.0)
    got = run("task_arithmetic", [f1, f2], [1.0, 1.0], {"scaling_coef": 0.4})
    assert (got - 0.4 * (f1.delta() + f2.delta())).abs().max() <= 1e-5


def test_linear_factors_differs_from_linear():
    f1, f2 = rand_factors(seed=10), rand_factors(seed=11)
    lf = run("linear_factors", [f1, f2], [0.5, 0.5])
    cross = 0.25 * (f1.delta() + f2.delta() + f1.scale * f1.B @ f2.A + f2.scale * f2.B @ f1.A)
    assert (lf - cross).abs().max() <= 1e-5  # (Σ w s B)(Σ w A) with its cross terms
    assert (lf - run("linear", [f1, f2], [0.5, 0.5])).abs().max() > 0.1
    with pytest.raises(AdapterError, match="equal ranks"):
        run("linear_factors", [f1, rand_factors(r=3)], [1, 1])


def _const(delta):
    """A LoraFactors whose ΔW is exactly ``delta`` (rank = d_in, A = I)."""
    return LoraFactors(A=torch.eye(delta.shape[1]), B=delta.clone(), scale=1.0)


T1 = torch.tensor([[3.0, -1.0, 2.0], [-4.0, 0.5, 1.5]])
T2 = torch.tensor([[-1.0, 2.5, 3.0], [2.0, -0.2, -5.0]])


def test_ties_hand_built():
    # density 4/6: trim keeps |.| ≥ 1.5 of T1 and |.| ≥ 2 of T2:
    #   T1' = [[3, 0, 2], [-4, 0, 1.5]]   T2' = [[0, 2.5, 3], [2, 0, -5]]
    # weights 1: sum [[3, 2.5, 5], [-2, 0, -3.5]] -> signs [[+, +, +], [-, 0, -]]
    #   disjoint mean [[3, 2.5, (2+3)/2], [-4, 0, -5]]
    got = run("ties", [_const(T1), _const(T2)], [1.0, 1.0], {"density": 4 / 6})
    assert torch.allclose(got, torch.tensor([[3.0, 2.5, 2.5], [-4.0, 0.0, -5.0]]), atol=1e-6)
    # weights [0.5, 2]: T~1 = [[1.5, 0, 1], [-2, 0, .75]], T~2 = [[0, 5, 6], [4, 0, -10]]
    #   sum [[1.5, 5, 7], [2, 0, -9.25]] -> signs [[+, +, +], [+, 0, -]]
    #   disjoint mean [[1.5, 5, (1+6)/2], [4, 0, -10]]
    got = run("ties", [_const(T1), _const(T2)], [0.5, 2.0], {"density": 4 / 6})
    assert torch.allclose(got, torch.tensor([[1.5, 5.0, 3.5], [4.0, 0.0, -10.0]]), atol=1e-6)


def test_magnitude_prune_hand_built():
    got = run("magnitude_prune", [_const(T1), _const(T2)], [1.0, -1.0], {"density": 4 / 6})
    want = torch.tensor([[3.0, 0, 2], [-4, 0, 1.5]]) - torch.tensor([[0, 2.5, 3], [2, 0, -5]])
    assert torch.allclose(got, want, atol=1e-6)


def test_dare_density_one_equals_undropped():
    fs = [rand_factors(seed=12), rand_factors(seed=13, scale=2.0)]
    w = [0.6, -0.9]
    assert (run("dare_linear", fs, w, {"density": 1.0, "seed": 5}) - run("linear", fs, w)).abs().max() <= 1e-5
    for trim in (1.0, 0.3):
        a = run("dare_ties", fs, w, {"density": 1.0, "trim_density": trim, "seed": 5})
        b = run("ties", fs, w, {"density": trim})
        assert torch.equal(a, b)


def _old_drop_rate_dare(deltas: torch.Tensor, drop_rate: float, seed: int) -> torch.Tensor:
    """The former ``drop_rate`` formula, written out: keep u ≥ p (u uniform from a private generator,
    one mask per adapter in order), rescale by 1/(1 − p)."""
    g = torch.Generator().manual_seed(seed % (1 << 63))
    keep = torch.stack([torch.rand(deltas.shape[1:], generator=g) >= drop_rate for _ in deltas])
    return deltas * keep / (1.0 - drop_rate)


@pytest.mark.parametrize("density", [0.1, 0.5, 0.7])
def test_dare_density_equals_old_drop_rate(density):
    """density d (kept fraction) gives the result the former option drop_rate = 1 - d gave."""
    from lorasoups.merge.driver import module_seed
    from lorasoups.merge.ties import ties_merge

    fs = [rand_factors(seed=40), rand_factors(seed=41, scale=2.0), rand_factors(seed=42, scale=-1.0)]
    w = [0.5, 1.0, 0.8]
    d = torch.stack([f.delta() for f in fs])  # (n, d_out, d_in)
    old = _old_drop_rate_dare(d, 1.0 - density, module_seed(9, "m"))
    got = run("dare_linear", fs, w, {"density": density, "seed": 9}, module="m")
    assert torch.allclose(got, torch.einsum("n,nij->ij", torch.tensor(w), old), atol=1e-5)
    got = run("dare_ties", fs, w, {"density": density, "trim_density": 0.5, "seed": 9}, module="m")
    assert torch.allclose(got, ties_merge(old, torch.tensor(w), 0.5), atol=1e-5)
    # about (1 - density) of one adapter's entries are dropped
    one = run("dare_linear", fs[:1], [1.0], {"density": density, "seed": 9}, module="m")
    assert abs((one == 0).float().mean().item() - (1.0 - density)) < 0.1
    with pytest.raises(ConfigError, match="renamed to 'density' .*density = 1 - drop_rate"):
        resolve_params(get_merge_method("dare_linear"), {"drop_rate": 1.0 - density})


def test_dare_mean_over_seeds_approaches_linear():
    fs = [rand_factors(seed=14), rand_factors(seed=15, scale=2.0)]
    w = [0.6, 0.4]
    lin = run("linear", fs, w)
    info = get_merge_method("dare_linear")
    p = resolve_params(info, {"density": 0.5})
    draws = [merge_module(info, fs, w, p, f"layers.{s}.q_proj") for s in range(2000)]
    single = draws[0]
    mean = torch.stack(draws).mean(0)
    scale = lin.abs().max()
    assert (single - lin).abs().max() > 0.3 * scale  # one draw is far from linear
    assert (mean - lin).abs().max() < 0.1 * scale  # std of the mean ≈ 2.2 % here
    # drop rate: about half the entries of one adapter's dropped delta are zero
    one = run("dare_linear", fs[:1], [1.0], {"density": 0.5, "seed": 1})
    frac = (one == 0).float().mean().item()
    assert 0.35 < frac < 0.65


def test_module_seed_depends_on_module_and_seed_only():
    assert module_seed(0, "a.q") == module_seed(0, "a.q")
    assert module_seed(0, "a.q") != module_seed(1, "a.q") != module_seed(0, "a.k")
    fs = [rand_factors(seed=16)]
    a = run("dare_linear", fs, [1.0], {"density": 0.5, "seed": 3}, module="x")
    b = run("dare_linear", fs, [1.0], {"density": 0.5, "seed": 3}, module="x")
    c = run("dare_linear", fs, [1.0], {"density": 0.5, "seed": 3}, module="y")
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_params_validation():
    info = get_merge_method("ties")
    assert resolve_params(info, {"density": "0.5"}) == {"density": 0.5}
    with pytest.raises(ConfigError, match="did you mean 'density'"):
        resolve_params(info, {"densty": 0.5})
    with pytest.raises(ConfigError, match="valid number"):
        resolve_params(info, {"density": "lots"})
    assert resolve_params(get_merge_method("dare_linear"), {"seed": "7"})["seed"] == 7
    with pytest.raises(ConfigError, match="integer"):
        resolve_params(get_merge_method("dare_linear"), {"seed": "1.5"})
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_params(get_merge_method("linear"), {"density": 1})
    with pytest.raises(ConfigError, match="density: input should be greater than 0"):
        resolve_params(info, {"density": 0.0})
    with pytest.raises(ConfigError, match="density: input should be less than or equal to 1"):
        resolve_params(get_merge_method("dare_linear"), {"density": 1.5})
    with pytest.raises(ConfigError, match="scaling_coef"):
        resolve_params(get_merge_method("task_arithmetic"), {"scaling_coef": float("inf")})
    with pytest.raises(ConfigError, match="did you mean 'ties'"):
        get_merge_method("tie")


# ------------------------------------------------------------------------------------- SVD step

def test_svd_full_rank_reproduces_delta():
    f = rand_factors(r=5, seed=17)
    d = f.delta()
    for K in (5, 8, 100):
        g, err = truncate_delta(d, K)
        assert (g.delta() - d).abs().max() <= 1e-5 and err < 1e-5
        h, err2 = truncate_factors(f, K)
        assert (h.delta() - d).abs().max() <= 1e-5 and err2 < 1e-5


def test_svd_error_is_norm_of_dropped_singular_values():
    g = torch.Generator().manual_seed(18)
    d = torch.randn(D_OUT, D_IN, generator=g)
    S = torch.linalg.svdvals(d.double())
    for K in (1, 3, 7):
        f, err = truncate_delta(d, K)
        assert f.r == K
        expected = float(S[K:].norm() / S.norm())
        actual = float((d - f.delta()).norm() / d.norm())
        assert abs(err - expected) < 1e-5 and abs(actual - expected) < 1e-5
    # factor route (QR + small SVD) on a rank-sum: same errors as the dense SVD of its product
    c = concat_factors([rand_factors(r=4, seed=19), rand_factors(r=3, seed=20)], [1.0, -0.5])
    for K in (2, 5):
        a, ea = truncate_factors(c, K)
        b, eb = truncate_delta(c.delta(), K)
        assert abs(ea - eb) < 1e-5 and (a.delta() - b.delta()).abs().max() < 1e-4


def test_svd_low_precision_inputs_and_randomized():
    g = torch.Generator().manual_seed(21)
    d = torch.randn(64, 48, generator=g)
    for dt in (torch.float16, torch.bfloat16):
        f, err = truncate_delta(d.to(dt), 10)
        assert f.A.dtype == torch.float32
        ref = d.to(dt).float()
        S = torch.linalg.svdvals(ref.double())
        assert abs(err - float(S[10:].norm() / S.norm())) < 1e-5
    f, err = truncate_delta(d, 5, driver="randomized", oversample=4, niter=4)
    actual = float((d - f.delta()).norm() / d.norm())
    assert abs(err - actual) < 1e-5  # the reported error is exact for the written factors
    best = float(torch.linalg.svdvals(d)[5:].norm() / d.norm())
    assert best - 1e-6 <= err < best * 1.05
    with pytest.raises(ValueError):
        truncate_delta(d, 0)


@pytest.mark.parametrize("name", ["ties", "magnitude_prune", "dare_ties"])
def test_blockwise_equals_whole_matrix(name, monkeypatch):
    """Row-block processing (used for large matrices) gives the same result as one block."""
    import lorasoups.merge.magnitude_prune as mp

    fs = [rand_factors(seed=30), rand_factors(seed=31, scale=2.0), rand_factors(seed=32, scale=-1.0)]
    params = {"density": 0.3} if name != "dare_ties" else {"density": 0.7, "trim_density": 0.5}
    whole = run(name, fs, [0.5, 1.0, 0.8], params)
    monkeypatch.setattr(mp, "BLOCK_ELEMENTS", 7)  # one row (D_IN = 10) per block
    blocks = run(name, fs, [0.5, 1.0, 0.8], params)
    assert torch.equal(whole, blocks)
    # and both equal a direct whole-matrix reference of trim -> weight -> elect -> disjoint mean
    if name == "ties":
        d = torch.stack([f.delta() for f in fs])
        k = round(0.3 * d[0].numel())
        trimmed = torch.stack([x * (x.abs() >= x.abs().flatten().topk(k).values.min()) for x in d])
        tw = trimmed * torch.tensor([0.5, 1.0, 0.8]).reshape(-1, 1, 1)
        sign = tw.sum(0).sign()
        agree = (tw.sign() == sign) & (tw != 0)
        ref = (tw * agree).sum(0) / agree.sum(0).clamp_min(1)
        assert torch.allclose(whole, ref, atol=1e-6)
