"""The typed option spec: one declaration gives validation, parsing, CLI flags and listings."""

import argparse
from typing import Literal

import pytest

from lorasoups.errors import ConfigError
from lorasoups.spec import UNSET, Spec, opt


class Toy(Spec):
    renamed = {"lr": "learning_rate"}
    learning_rate: float = opt(1e-3, "step size", gt=0, unit="1/step")
    max_steps: int | None = opt(None, "optimiser steps", ge=1)
    density: float = opt(0.5, "kept fraction", gt=0, le=1)
    granularity: Literal["module", "layer", "global"] = opt("module", "sharing")
    no_train: bool = opt(False, "export the start")
    data: list[str] = opt([], "data specs")


def test_valid_values_parse_and_defaults_fill():
    t = Toy.parse({"learning_rate": "0.01", "granularity": "layer"})
    assert t.learning_rate == 0.01 and t.granularity == "layer" and t.max_steps is None and t.density == 0.5


def test_every_problem_reported_at_once_with_names():
    probs = Toy.problems({"lr": 1, "learning_rate": -1, "granularity": "bogus", "density": 7, "densty": 1},
                         where="methods.toy.params")
    text = "\n".join(probs)
    assert len(probs) == 5, probs
    assert "methods.toy.params.lr: renamed to 'learning_rate'" in text
    assert "methods.toy.params.learning_rate: input should be greater than 0" in text
    assert "methods.toy.params.granularity:" in text and "'module'" in text
    assert "methods.toy.params.density: input should be less than or equal to 1" in text
    assert "densty: unknown option (did you mean 'density'?)" in text
    with pytest.raises(ConfigError) as e:
        Toy.parse({"density": 7})
    assert e.value.problems == ["options.density: input should be less than or equal to 1 (got 7)"]


def test_bad_value_is_rejected_for_every_option_that_has_one():
    for name in Toy.model_fields:
        bad = Toy.bad_value(name)
        if bad is UNSET:
            assert name == "data"
            continue
        assert Toy.problems({name: bad}), (name, bad)


def test_cli_flags_come_from_the_declaration():
    p = argparse.ArgumentParser()
    Toy.add_arguments(p)
    ns = p.parse_args(["--learning-rate", "0.1", "--max-steps", "none", "--data", "a", "b"])
    assert Toy.from_args(ns) == {"learning_rate": 0.1, "max_steps": None, "data": ["a", "b"]}
    assert Toy.from_args(p.parse_args(["--no-train"])) == {"no_train": True}
    assert Toy.from_args(p.parse_args([])) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["--granularity", "bogus"])


def test_describe_lists_type_default_range_unit():
    info = {o.name: o for o in Toy.describe()}
    assert info["learning_rate"].constraint == "> 0" and info["learning_rate"].unit == "1/step"
    assert info["density"].constraint == "> 0, ≤ 1"
    assert info["granularity"].constraint == "one of module, layer, global"
    assert info["max_steps"].type == "int | None"


def test_old_name_is_refused_and_its_value_still_checked():
    assert Toy.problems({"lr": -1}) == ["options.lr: renamed to 'learning_rate'",
                                        "options.learning_rate: input should be greater than 0 (got -1)"]
    assert Toy.problems({"lr": 0.1}) == ["options.lr: renamed to 'learning_rate'"]
