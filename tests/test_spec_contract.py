"""Contract: every declared option of every registered method (and of evaluation, and of SFT
training once its options are a spec) is range-checked by config validation, through the same path
``lorasoups validate`` uses, before any model is loaded."""

from __future__ import annotations

import json

import pytest

from lorasoups.cli.main import main
from lorasoups.eval.options import RUNNER_ONLY, EvalOptions
from lorasoups.methods import load_methods
from lorasoups.spec import UNSET, Spec

CONFIG = """
name: contract
base: tiny
train: {r: 2, max_steps: 2}
skills:
  math: {data: ["gsm8k:max_samples=4"]}
  code: {data: ["codealpaca:max_samples=4"]}
methods:
  base: {}
eval:
  tasks:
    gsm_hard: {role: target, limit: 2}
"""


def _cases() -> list[tuple[str, str, object]]:
    """(override key path, option name, bad value) for every option whose bad value is derivable."""
    out = []
    for name, info in sorted(load_methods().items()):
        if info.options is None:
            continue
        for opt in info.options.model_fields:
            bad = info.options.bad_value(opt)
            if bad is not UNSET:
                out.append((f"methods.{name}.params.{opt}", opt, bad))
    for opt in EvalOptions.model_fields:
        bad = EvalOptions.bad_value(opt)
        if bad is not UNSET and opt not in RUNNER_ONLY:
            out.append((f"eval.options.{opt}", opt, bad))
    from lorasoups.train.sft import TrainOptions

    if isinstance(TrainOptions, type) and issubclass(TrainOptions, Spec):
        for opt in TrainOptions.model_fields:
            bad = TrainOptions.bad_value(opt)
            if bad is not UNSET:
                out.append((f"train.{opt}", opt, bad))
    return out


CASES = _cases()


def test_contract_covers_the_closed_form_merges():
    specd = {k.split(".")[1] for k, _, _ in CASES if k.startswith("methods.")}
    assert {"ties", "dare_linear", "dare_ties", "magnitude_prune", "task_arithmetic", "knots", "core_space"} <= specd
    assert sum(k.startswith("eval.") for k, _, _ in CASES) >= 8


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (ours or transformers') fails the test."""
    import transformers

    import lorasoups.models as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded during validation")

    monkeypatch.setattr(models, "load_base", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


@pytest.mark.parametrize("key,opt,bad", CASES, ids=[f"{k}={b!r}" for k, _, b in CASES])
def test_out_of_range_option_is_rejected_before_any_model(key, opt, bad, tmp_path, capsys, no_model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    rc = main(["validate", str(cfg), f"{key}={json.dumps(bad)}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{key}:" in err, err  # the problem names the option's full path


def test_good_values_validate(tmp_path, capsys, no_model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    good = ["methods.ties.params.density=0.5", "methods.dare_ties.params.trim_density=0.5",
            "methods.knots.params.inner=dare_ties", "methods.knots.params.trim_density=0.3", "eval.options.limit=3"]
    assert main(["validate", str(cfg), *good]) == 0, capsys.readouterr().err


def test_merge_function_defaults_match_their_spec():
    """A pure merge function called directly behaves like the registered method with no options."""
    import inspect

    for name, info in load_methods().items():
        if info.kind != "merge":
            continue
        assert info.options is not None, f"{name}: a closed-form merge declares its options"
        kw = {p.name: p.default for p in inspect.signature(info.fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
        assert kw == {k: f.default for k, f in info.options.model_fields.items()}, name
