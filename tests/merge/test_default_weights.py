"""Default merge weights: ``linear`` averages (w_i = 1/n, a uniform model soup), ``task_arithmetic``
sums (w_i = 1); the summary line names the weights used (issue #16)."""

import json

import pytest

from lorasoups.cli.main import main
from lorasoups.io.adapters import read_adapter
from lorasoups.methods import register_method
from lorasoups.merge.driver import merge_adapters, resolve_weights
from lorasoups.testing import make_peft_adapter

SPECS = {
    "a": dict(r=8, lora_alpha=16, target_modules=("q_proj", "v_proj"), seed=11),
    "b": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=("q_proj", "up_proj"), seed=12),
    "c": dict(r=2, lora_alpha=2, target_modules=("q_proj", "o_proj"), seed=13),
}


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dw")
    return [make_peft_adapter(tiny_dir, root / k, **v) for k, v in SPECS.items()]


def deltas_of(paths):
    """Per module, the list of ΔW_i = s_i B_i A_i (zeros where an adapter lacks the module)."""
    recs = [read_adapter(p).modules for p in paths]
    mods = sorted(set().union(*recs))
    out = {}
    for m in mods:
        ref = next(r[m] for r in recs if m in r).delta()
        out[m] = [r[m].delta() if m in r else ref * 0 for r in recs]
    return out


def test_linear_without_weights_is_the_mean(adapters, tmp_path, capsys):
    rc = main(["merge", "--method", "linear", "--adapters", *map(str, adapters), "--out", str(tmp_path / "avg")])
    assert rc == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "linear" in summary and "weights [0.3333, 0.3333, 0.3333] (default: 1/n, the average)" in summary
    got = read_adapter(tmp_path / "avg").modules
    ds = deltas_of(adapters)
    assert set(got) == set(ds)
    for m, d in ds.items():
        mean = sum(d) / len(d)
        assert (got[m].delta() - mean).abs().max() <= 1e-6, m
        # not the sum: the q_proj modules are in all three adapters and differ from their mean
        if m.endswith("q_proj"):
            assert (got[m].delta() - sum(d)).abs().max() > 1e-3
    info = json.loads((tmp_path / "avg" / "merge_info.json").read_text())
    assert info["weights"] == pytest.approx([1 / 3] * 3) and info["weights_default"] is True


def test_task_arithmetic_without_weights_is_the_sum(adapters, tmp_path):
    out = merge_adapters(adapters, "task_arithmetic", tmp_path / "sum", params={"scaling_coef": 0.5})
    got = read_adapter(out).modules
    for m, d in deltas_of(adapters).items():
        assert (got[m].delta() - 0.5 * sum(d)).abs().max() <= 1e-6, m
    assert json.loads((out / "merge_info.json").read_text())["weights"] == [1.0, 1.0, 1.0]


def test_explicit_weights_are_kept_and_printed(adapters, tmp_path, capsys):
    rc = main(["merge", "--method", "linear", "--adapters", *map(str, adapters[:2]), "--weights", "1", "1",
               "--out", str(tmp_path / "s"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "weights [1, 1]," in out and "default" not in out
    got = read_adapter(tmp_path / "s").modules
    for m, d in deltas_of(adapters[:2]).items():
        assert (got[m].delta() - sum(d)).abs().max() <= 1e-6


def test_resolve_weights_and_registration_checks():
    assert resolve_weights(None, 4, "mean") == [0.25] * 4
    assert resolve_weights(None, 2, "ones") == [1.0, 1.0]
    assert resolve_weights([2, -1], 2, "mean") == [2.0, -1.0]
    with pytest.raises(ValueError, match="default_weights"):
        register_method("bogus_dw", kind="merge", space="concat", default_weights="median")(lambda f, w: None)
