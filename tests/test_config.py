"""Experiment configs: include / presets / overrides resolution and validation that reports every
problem at once (unknown keys with suggestions, unknown methods/tasks, parameter types)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorasoups.cli.main import main
from lorasoups.config import apply_overrides, load_config, load_raw, parse_yaml, resolve_preset
from lorasoups.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

GOOD = """
name: t
base: tiny
seed: 1
train: {r: 4, max_steps: 10, learning_rate: 1e-3}
skills:
  math: {data: ["gsm8k:max_samples=20"]}
  code: {data: ["codealpaca:max_samples=20"]}
methods:
  base: {}
  math: {method: skill, skill: math}
  code: {method: skill, skill: code}
  ties: {params: {density: 0.5}}
  cat: {params: {learning_rate: 0.05}}
eval:
  options: {limit: 4}
  tasks:
    gsm_hard: {role: target}
presets:
  smoke: {train: {max_steps: 2}}
  cpu: {extends: smoke, seed: 3, methods: {cat: {enabled: false}}}
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_reads_exponent_floats():
    assert parse_yaml("a: 1e-4\nb: 2E5\nc: 3\nd: 1.5") == {"a": 1e-4, "b": 2e5, "c": 3, "d": 1.5}


def test_include_preset_extends_and_overrides(tmp_path):
    _write(tmp_path, "seed: 7\ntrain: {r: 2, lora_alpha: 4}\n", "common.yaml")
    p = _write(tmp_path, "include: common.yaml\ntrain: {r: 8}\n" + GOOD.replace("seed: 1\n", "").replace(
        "train: {r: 4, max_steps: 10, learning_rate: 1e-3}\n", ""))
    raw = load_raw(p)
    assert raw["seed"] == 7 and raw["train"] == {"r": 8, "lora_alpha": 4}
    r = resolve_preset(raw, "cpu")
    assert r["seed"] == 3 and r["train"]["max_steps"] == 2 and "presets" not in r
    r = apply_overrides(r, ["train.max_steps=5", "methods.ties.params.density=0.25", "eval.options.limit=1e1"])
    assert r["train"]["max_steps"] == 5 and r["methods"]["ties"]["params"]["density"] == 0.25
    assert r["eval"]["options"]["limit"] == 10.0
    cfg = load_config(p, preset="cpu", overrides=["train.max_steps=5"])
    assert cfg.skills["math"].train["max_steps"] == 5 and cfg.skills["math"].train["lora_alpha"] == 4
    assert [m.label for m in cfg.methods] == ["base", "math", "code", "ties"]  # cat disabled by the preset
    assert cfg.seed == 3 and cfg.preset == "cpu"


def test_unknown_preset_and_include_cycle(tmp_path):
    p = _write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        load_config(p, preset="smok")
    a = _write(tmp_path, "include: b.yaml\n", "a.yaml")
    _write(tmp_path, "include: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="include cycle"):
        load_raw(a)


def test_all_problems_reported_together(tmp_path):
    text = GOOD.replace("  ties: {params: {density: 0.5}}", "  ties: {params: {density: high}}\n  tie: {}") \
               .replace("gsm_hard: {role: target}", "gsm_hardd: {role: target}") \
               .replace("seed: 1", "sed: 1")
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert len(ei.value.problems) == 4, msg
    assert "unknown key 'sed' (did you mean 'seed'" in msg
    assert "unknown method 'tie' (did you mean 'ties'" in msg
    assert "methods.ties.params.density: input should be a valid number" in msg and "(got 'high')" in msg
    assert "unknown task 'gsm_hardd' (did you mean 'gsm_hard'" in msg


def test_validate_cli_three_mistakes_one_message(tmp_path, capsys):
    text = GOOD.replace("  cat: {params: {learning_rate: 0.05}}", "  cat: {params: {learning_rate: fast}}\n  soup: {}") \
               .replace("gsm_hard: {role: target}", "gsm_hrd: {role: target}")
    p = _write(tmp_path, text)
    rc = main(["validate", str(p)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("lorasoups validate: error:") == 1  # one message
    assert "3 problems" in err
    assert "unknown method 'soup'" in err
    assert "unknown task 'gsm_hrd' (did you mean 'gsm_hard'" in err
    assert "methods.cat.params.learning_rate: input should be a valid number" in err


def test_wrong_keys_suggest_right_ones(tmp_path):
    text = GOOD.replace("cat: {params: {learning_rate: 0.05}}", "cat: {parms: {learning_rate: 0.05}}") \
               .replace("ties: {params: {density: 0.5}}", "ties: {params: {densty: 0.5}}") \
               .replace("train: {r: 4,", "train: {rank_r: 4, lora_alpa: 8,")
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "unknown key 'parms' (did you mean 'params'" in msg
    assert "methods.ties.params.densty: unknown option (did you mean 'density'" in msg
    assert "train.lora_alpa: unknown option (did you mean 'lora_alpha'" in msg


def test_skill_and_data_references(tmp_path):
    text = GOOD.replace("math: {method: skill, skill: math}", "math: {method: skill, skill: mth}") \
               .replace('["codealpaca:max_samples=20"]', '["codealpca:max_sample=20"]')
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "unknown skill 'mth' (did you mean 'math'" in msg
    assert "unknown dataset 'codealpca' (did you mean 'codealpaca'" in msg
    assert "unknown key 'max_sample' (did you mean 'max_samples'" in msg


def test_validate_names_every_value_problem(tmp_path, capsys):
    """Ranges, choices and data-spec values are problems at validation, not when the step runs."""
    p = _write(tmp_path, GOOD)
    rc = main(["validate", str(p), "methods.cat.params.lr=-1", "methods.cat.params.granularity=modul",
               "methods.ties.params.density=7", 'skills.math.data=["gsm8k:max_samples=0"]',
               "eval.options.limit=0", "train.lora_dropout=2", "methods.dare_linear.params.drop_rate=0.9"])
    err = capsys.readouterr().err
    assert rc == 2 and "7 problems" in err, err
    assert "methods.cat.params.lr: renamed to 'learning_rate'" in err
    assert "methods.cat.params.granularity" in err and "did you mean 'module'" in err
    assert "methods.ties.params.density: input should be less than or equal to 1" in err
    assert "skills.math.data[0]" in err and "max_samples" in err
    assert "eval.options.limit: input should be greater than or equal to 1" in err
    assert "train" in err and "lora_dropout" in err
    assert "methods.dare_linear.params.drop_rate: renamed to 'density' (the kept fraction: density = 1 - drop_rate)" in err


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for preset in ("smoke", "cpu", "paper"):
        assert f"{preset}:" in out


def test_four_configs_shipped():
    assert {p.stem for p in CONFIGS} >= {"math_code", "qabot_dnd", "bio_qa", "prompt_formats"}


def test_skill_shorthand(tmp_path):
    p = _write(tmp_path, GOOD.replace("  math: {method: skill, skill: math}", "  skill:math: {}"))
    cfg = load_config(p)
    m = cfg.method("skill:math")
    assert m.method == "skill" and m.skills == ("math",)


def test_overrides_after_options_on_the_command_line(tmp_path, capsys):
    """``validate/run CONFIG --preset X key=value``: overrides after an option still apply."""
    p = _write(tmp_path, GOOD)
    rc = main(["validate", str(p), "--preset", "smoke", "methods.cat.params.learning_rate=fast"])
    err = capsys.readouterr().err
    assert rc == 2 and "methods.cat.params.learning_rate: input should be a valid number" in err
    with pytest.raises(SystemExit):
        main(["validate", str(p), "--preset", "cpu", "--no-such-flag"])


def test_old_training_names_are_refused_naming_the_new_ones(tmp_path, capsys):
    p = _write(tmp_path, GOOD)
    rc = main(["validate", str(p), "train.lr=1e-3", "train.steps=5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.lr: renamed to 'learning_rate'" in err and "train.steps: renamed to 'max_steps'" in err


def test_stacked_presets_apply_left_to_right(tmp_path):
    text = GOOD + "  study: {seed: 9, methods: {cat_layer: {like: cat, params: {granularity: layer}}}}\n"
    p = _write(tmp_path, text)
    cfg = load_config(p, preset="cpu,study")
    assert cfg.preset == "cpu,study" and cfg.seed == 9  # study after cpu (which set seed 3)
    assert cfg.skills["math"].train["max_steps"] == 2  # cpu extends smoke
    # cpu disabled cat; the like row still starts from cat's params
    assert "cat" not in [m.label for m in cfg.methods]
    lay = cfg.method("cat_layer")
    assert lay.method == "cat" and dict(lay.params) == {"learning_rate": 0.05, "granularity": "layer"}
    assert load_config(p, preset="study,cpu").seed == 3
    # overrides reach like rows through the row they copy
    assert load_config(p, preset="study", overrides=["methods.cat.params.learning_rate=0.2"]) \
        .method("cat_layer").params["learning_rate"] == 0.2
    with pytest.raises(ConfigError, match="unknown preset 'cpx'.*did you mean 'cpu'"):
        load_config(p, preset="cpx,study")
    with pytest.raises(ConfigError, match="an empty name"):
        load_config(p, preset="cpu,")


def test_disabled_task_takes_its_columns(tmp_path):
    text = GOOD.replace("    gsm_hard: {role: target}", "    gsm_hard: {role: target}\n    mbpp: {role: skill, skill: code}") + \
        "report:\n  columns:\n    - {task: gsm_hard, metric: nll_gold}\n    - {task: mbpp, metric: nll_gold}\n"
    p = _write(tmp_path, text)
    assert [c.task for c in load_config(p).columns] == ["gsm_hard", "mbpp"]
    cfg = load_config(p, overrides=["eval.tasks.mbpp.enabled=false"])
    assert [c.task for c in cfg.columns] == ["gsm_hard"] and [t.label for t in cfg.tasks] == ["gsm_hard"]
    with pytest.raises(ConfigError, match="'mbp' is not an evaluation task"):  # a typo is still an error
        load_config(p, overrides=["report.columns=[{task: mbp, metric: nll_gold}]"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_cat_study_stacks_on_smoke_and_cpu(path):
    from lorasoups.cli.run_cmd import default_out

    for base in ("smoke", "cpu"):
        plain, study = load_config(path, preset=base), load_config(path, preset=f"{base},cat_study")
        cat = plain.method("cat")
        variants = [m for m in study.methods if m.label.startswith("cat_")
                    and m.label not in ("cat_uniform", "cat_sum", "cat_random")]  # the static and random controls
        assert {m.label for m in variants} == {"cat_layer", "cat_global", "cat_raw", "cat_balanced", "cat_lr_low",
                                               "cat_lr_high", "cat_init_random"}
        for m in variants:  # cat at this preset with one change
            changed = {k for k in set(m.params) | set(cat.params) if m.params.get(k) != cat.params.get(k)}
            assert m.method == "cat" and len(changed) == 1, (m.label, changed)
        # the rows of the first run are unchanged (so --from re-uses them); only target tasks remain
        for m in plain.methods:
            assert study.method(m.label) == m
        assert {t.label for t in study.tasks} == {t.label for t in plain.tasks if t.role == "target"}
        assert all(study_t.options == next(t for t in plain.tasks if t.label == study_t.label).options
                   for study_t in study.tasks)
        assert default_out(study.name, study.preset).name == f"{study.name}_{base}_cat_study"
