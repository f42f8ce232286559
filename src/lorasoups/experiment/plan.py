"""The step graph of an experiment: which LoRAs to train, which merges to build, which evaluations
to run, in an order where every step comes after the steps whose outputs it reads.

Run folder layout (every path below is one step's output)::

    RUN_DIR/skills/<skill>/          skill LoRA (PEFT folder)            step train/<skill>
    RUN_DIR/methods/<label>/         DATA-MIX, merge, CAT, LoRA Hub, MoE  step build/<label>
    RUN_DIR/eval/<label>/<task>/     results.json + samples.jsonl          step eval/<label>
    RUN_DIR/steps/<step id>.json     markers: the content key of each finished output
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ExperimentConfig, MethodConfig

STAGES = ("train", "data_mix", "merge", "cat", "lorahub", "moe", "eval")


@dataclass
class Step:
    """One unit of work with one output.

    Attributes:
        id: unique id, also the marker's relative path (``train/math``, ``build/ties``, ``eval/ties``).
        stage: ``train`` (a skill LoRA), ``data_mix``, ``merge``, ``cat``, ``lorahub``, ``moe``
            (the kind of procedure, for the timing table), ``eval``.
        label: the skill name (train) or the method label.
        title: one line for the progress display.
        deps: ids of the steps whose outputs it reads.
        out: its output folder (eval: the method's eval folder, one sub-folder per task).
        method: the method row (None for skill training).
    """

    id: str
    stage: str
    label: str
    title: str
    deps: tuple[str, ...]
    out: Path
    method: MethodConfig | None = None
    skill: str | None = None
    extra: dict = field(default_factory=dict)


def stage_of(m: MethodConfig) -> str:
    """The stage a composite method's build belongs to."""
    if m.kind == "trained":
        return "data_mix"
    if m.kind == "merge":
        return "merge"
    if m.kind == "learned":
        return "cat"
    if m.kind == "search":
        return "lorahub"
    if m.kind == "routed":
        return "moe"
    return m.kind


def method_output(cfg: ExperimentConfig, run_dir: Path, m: MethodConfig) -> Path | None:
    """The adapter (or MoE) folder a method row is evaluated with; None for the base model."""
    if m.method == "base":
        return None
    if m.method == "skill":
        return run_dir / "skills" / m.skills[0]
    return run_dir / "methods" / m.label


def build_plan(cfg: ExperimentConfig, run_dir: str | Path) -> list[Step]:
    """Steps in execution order: skill LoRAs first, then every build, then every evaluation.

    Only skills some method uses are trained. Trained methods (DATA-MIX) do not read the skill
    LoRAs and so do not depend on them.
    """
    run_dir = Path(run_dir)
    used: list[str] = []
    for m in cfg.methods:
        if m.kind == "trained" or m.method == "base":
            continue
        for s in m.skills:
            if s not in used:
                used.append(s)
    steps: list[Step] = []
    for s in cfg.skills:  # config order
        if s not in used:
            continue
        sk = cfg.skills[s]
        steps.append(Step(id=f"train/{s}", stage="train", label=s,
                          title=f"train skill LoRA '{s}' on {', '.join(sk.data)}",
                          deps=(), out=run_dir / "skills" / s, skill=s))
    builds = [m for m in cfg.methods if m.method not in ("base", "skill")]
    # cheap closed-form merges first, then the learned ones, DATA-MIX (a full training) last.
    order = {"merge": 0, "cat": 1, "lorahub": 2, "moe": 3, "data_mix": 4}
    builds.sort(key=lambda m: order.get(stage_of(m), 9))
    for m in builds:
        st = stage_of(m)
        deps = () if m.kind == "trained" else tuple(f"train/{s}" for s in m.skills)
        what = {"data_mix": "train DATA-MIX LoRA", "merge": "merge", "cat": "train CAT coefficients",
                "lorahub": "LoRA Hub search", "moe": "train MoE routers"}.get(st, st)
        if st == "cat" and m.params.get("no_train"):
            what = "export untrained CAT control"
        src = "+".join(m.skills)
        title = f"{what} '{m.label}'" + (f" ({m.method} of {src})" if st != "data_mix" else f" on {src} data")
        steps.append(Step(id=f"build/{m.label}", stage=st, label=m.label, title=title, deps=deps,
                          out=run_dir / "methods" / m.label, method=m))
    for m in cfg.methods:
        deps: tuple[str, ...] = ()
        if m.method == "skill":
            deps = (f"train/{m.skills[0]}",)
        elif m.method != "base":
            deps = (f"build/{m.label}",)
        steps.append(Step(id=f"eval/{m.label}", stage="eval", label=m.label,
                          title=f"evaluate '{m.label}' on {', '.join(t.label for t in cfg.tasks)}",
                          deps=deps, out=run_dir / "eval" / m.label, method=m))
    return steps
