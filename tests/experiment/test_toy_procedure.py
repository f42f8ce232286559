"""Adding a learned procedure touches only its own file, its registration and its test: a toy procedure,
defined and registered here, is validated by the config, planned, run by the runner's generic executor
on the tiny model (real skill LoRAs, the training kit's loss) and evaluated, with no runner change."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lorasoups.errors import ConfigError
from lorasoups.spec import Spec, opt


class SoftminOptions(Spec):
    """Options of the toy procedure (one declaration: config validation, flags, listing)."""

    temperature: float = opt(1.0, "softmax temperature over the adapters' negative losses", gt=0)
    batch_size: int = opt(4, "examples per forward pass", ge=1)
    cutoff_len: int = opt(64, "maximum tokens per example", ge=8, unit="tokens")
    seed: int = opt(0, "seed of the data sampling")


def softmin_merge(base: str, adapters: list, data: list, out: str | Path, *, seed: int = 0, device: str = "auto",
                  data_dir: str | None = None, overwrite: bool = False, **params: Any) -> Path:
    """Weights w_i = softmax(-loss_i / temperature) of each adapter alone on ``data``; writes the
    linear merge Σ w_i ΔW_i with the registered ``linear`` method. The procedure contract: no
    runner code knows it."""
    from lorasoups.io.adapters import read_adapter
    from lorasoups.merge.driver import merge_adapters
    from lorasoups.models import load_base
    from lorasoups.search.lorahub import set_weights, wrap_for_search
    from lorasoups.train.data import load_training_data
    from lorasoups.train.loop import eval_loss

    o = SoftminOptions.parse({**params, "seed": seed}, where="softmin")
    model, tok = load_base(base, device="cpu")
    records = [read_adapter(a) for a in adapters]
    td = load_training_data(data, tok, cutoff_len=o.cutoff_len, seed=seed, data_dir=data_dir)
    wrappers = wrap_for_search(model, records, "delta")
    losses = []
    for i in range(len(records)):
        set_weights(wrappers, [float(i == j) for j in range(len(records))])
        losses.append(eval_loss(model, td.examples, pad_token_id=tok.pad_token_id, batch_size=o.batch_size))
    z = [math.exp(-(x - min(losses)) / o.temperature) for x in losses]
    weights = [v / sum(z) for v in z]
    merge_adapters(adapters, "linear", out, weights=weights, base=base, overwrite=overwrite)
    (Path(out) / "softmin.json").write_text(json.dumps({"losses": losses, "weights": weights}))
    return Path(out)


@pytest.fixture
def registered():
    """Register the toy procedure for one test (and remove it afterwards: the registry is global)."""
    from lorasoups.methods import METHODS, load_methods, register_method

    load_methods()
    register_method("softmin", kind="learned", space="concat", options=SoftminOptions, stage="softmin", order=4,
                    title="fit softmin weights", description="toy: softmax(-loss) weights")(softmin_merge)
    yield
    del METHODS._items["softmin"]


def test_toy_procedure_runs_through_config_plan_and_runner(registered, tmp_path, tiny_dir):
    from lorasoups.config import build_config
    from lorasoups.experiment import Runner
    from lorasoups.testing import make_peft_adapter

    from .test_runner_cache import Fakes, _known, _write_records

    a = _write_records(tmp_path / "a.json", 8, "alpha")
    b = _write_records(tmp_path / "b.json", 8, "beta")
    raw = {"name": "toy", "base": str(tiny_dir), "seed": 0, "train": {"r": 2, "max_steps": 1},
           "skills": {"a": {"data": [str(a)]}, "b": {"data": [str(b)]}},
           "methods": {"base": {}, "softmin": {"params": {"temperature": 0.5}}},
           "eval": {"options": {"limit": 4}, "tasks": {"t_target": {"role": "target"}}}}
    known = _known()
    bad = json.loads(json.dumps(raw))
    bad["methods"]["softmin"]["params"] = {"temprature": 0.5}
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        build_config(bad, known=known, source=str(tmp_path / "toy.yaml"))
    cfg = build_config(raw, known=known, source=str(tmp_path / "toy.yaml"))

    fakes = Fakes(tiny_dir)

    def train(step, ctx):  # real (random) skill LoRAs on the tiny model, without training time
        make_peft_adapter(tiny_dir, step.out, r=2, seed=len(step.label) + ord(step.label[0]), std=0.2)
        return {}

    r = Runner(cfg, tmp_path / "run", executors={"train": train, "evaluate": fakes.evaluate}, log=lambda s: None)
    build = next(s for s in r.steps if s.id == "build/softmin")
    assert build.stage == "softmin" and build.title.startswith("fit softmin weights 'softmin'")
    assert build.deps == ("train/a", "train/b")
    doc = r.run()
    got = json.loads((tmp_path / "run" / "methods" / "softmin" / "softmin.json").read_text())
    assert len(got["weights"]) == 2 and abs(sum(got["weights"]) - 1) < 1e-6
    assert got["losses"][0] != got["losses"][1]
    assert "softmin" in doc["results"]
    assert "evaluate:softmin:t_target" in fakes.calls
