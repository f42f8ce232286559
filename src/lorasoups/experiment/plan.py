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



def stages() -> tuple[str, ...]:
    """Stage names in run order: ``train`` (skill LoRAs), each registered method's stage (by its
    registration's ``order``), ``eval``."""
    from ..methods import load_methods

    out = ["train"]
    for info in sorted((i for _, i in load_methods().items()), key=lambda i: i.order):
        if info.kind != "reference" and info.stage not in out:
            out.append(info.stage)
    return tuple(out + ["eval"])


@dataclass
class Step:
    """One unit of work with one output.

    Attributes:
        id: unique id, also the marker's relative path (``train/math``, ``build/ties``, ``eval/ties``).
        stage: ``train`` (a skill LoRA), the method registration's ``stage`` (``merge``, ``cat``,
            ``lorahub``, ``moe``, ``data_mix``, ...; for the timing table), ``eval``.
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


def method_info(m: MethodConfig):
    """The registration (:class:`lorasoups.methods.MethodInfo`) of a composite method row."""
    from ..methods import load_methods

    return load_methods().get(m.method)


def method_output(cfg: ExperimentConfig, run_dir: Path, m: MethodConfig) -> Path | None:
    """The adapter (or MoE) folder a method row is evaluated with; None for the base model."""
    if m.method == "base":
        return None
    if m.method == "skill":
        return run_dir / "skills" / m.skills[0]
    return run_dir / "methods" / m.label


def build_plan(cfg: ExperimentConfig, run_dir: str | Path) -> list[Step]:
    """Steps in execution order: skill LoRAs first, then every build, then every evaluation.

    Only skills some method uses are trained. Methods registered with ``uses_adapters=False``
    (DATA-MIX) do not read the skill LoRAs and so do not depend on them.
    """
    run_dir = Path(run_dir)
    used: list[str] = []
    for m in cfg.methods:
        if m.method == "base" or (m.method != "skill" and not method_info(m).uses_adapters):
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
    # by the registrations' order: cheap closed-form merges first, DATA-MIX (a full training) last
    builds.sort(key=lambda m: method_info(m).order)
    for m in builds:
        info = method_info(m)
        deps = tuple(f"train/{s}" for s in m.skills) if info.uses_adapters else ()
        src = "+".join(m.skills)
        title = f"{info.step_title(dict(m.params))} '{m.label}'" + (
            f" ({m.method} of {src})" if info.uses_adapters else f" on {src} data")
        steps.append(Step(id=f"build/{m.label}", stage=info.stage, label=m.label, title=title, deps=deps,
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
