"""What each step does: calls into the training, merge, CAT, LoRA Hub, MoE and evaluation APIs.

Each executor takes ``(step, ctx)``, writes the step's output folder ``step.out`` (the APIs write
atomically: temp folder + rename) and returns a small dict of facts for the step log. Heavy
imports happen inside the functions.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import LorasoupsError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Step
    from .runner import RunContext


def call_with_supported(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with the keyword arguments it accepts (all of them when it takes ``**kwargs``).

    Runner-supplied extras (``data_dir``, ``seed``, ``overwrite``, ``progress``) are dropped when a
    function does not declare them; options from the config are never dropped silently: they were
    validated against the same signature before the run started.
    """
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn(*args, **kwargs)
    ok = {k: v for k, v in kwargs.items() if k in sig.parameters}
    return fn(*args, **ok)


def with_device(ctx: "RunContext", opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with the run's ``--device`` (when given on the command line; it is an execution
    detail, not part of the config or of any step's content hash)."""
    dev = getattr(ctx, "device", None)
    return {**opts, "device": dev} if dev else opts


def skill_train_options(ctx: "RunContext", skill: str) -> dict[str, Any]:
    """Resolved ``train_lora`` options of one skill (config ``train`` + ``skills.<s>.train`` + seed)."""
    opts = dict(ctx.cfg.skills[skill].train)
    opts.setdefault("seed", ctx.cfg.seed)
    return opts


def composite_data(ctx: "RunContext", step: "Step") -> list[str]:
    """Training data of a composite method: its own ``data`` or the union of its skills' data."""
    m = step.method
    if m.data:
        return list(m.data)
    out: list[str] = []
    for s in m.skills:
        out.extend(ctx.cfg.skills[s].data)
    return out


def composite_params(ctx: "RunContext", step: "Step") -> dict[str, Any]:
    """Method parameters, with the experiment seed as the default ``seed`` of every method that
    takes one (DARE's drop mask, CAT/MoE/LoRA Hub sampling and initialisation)."""
    from ..methods import load_methods

    params = dict(step.method.params)
    reg = load_methods()
    takes_seed = step.method.method in reg and "seed" in reg.get(step.method.method).params
    if takes_seed or step.method.kind in ("learned", "search", "routed", "trained"):
        params.setdefault("seed", ctx.cfg.seed)
    return params


def exec_train(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """Train one skill LoRA with ``lorasoups.train.sft.train_lora``."""
    from ..train.sft import train_lora

    sk = ctx.cfg.skills[step.skill]
    opts = skill_train_options(ctx, step.skill)
    call_with_supported(train_lora, ctx.base, list(sk.data), step.out, data_dir=str(ctx.data_dir),
                        overwrite=True, resume=step.extra.get("resume", False), **with_device(ctx, opts))
    return {}


def exec_data_mix(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """Train the DATA-MIX LoRA on the union of the skills' data (``train_lora`` with several specs)."""
    from ..train.sft import train_lora

    opts = dict(step.method.params)
    opts.setdefault("seed", ctx.cfg.seed)
    call_with_supported(train_lora, ctx.base, composite_data(ctx, step), step.out, data_dir=str(ctx.data_dir),
                        overwrite=True, resume=step.extra.get("resume", False), **with_device(ctx, opts))
    return {}


def exec_merge(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """Closed-form merge of the skill LoRAs with ``lorasoups.merge.driver.merge_adapters``."""
    from ..merge.driver import merge_adapters

    params = composite_params(ctx, step)
    sig = inspect.signature(merge_adapters).parameters
    kw = {k: params.pop(k) for k in list(params) if k in sig and sig[k].kind is inspect.Parameter.KEYWORD_ONLY}
    adapters = [ctx.run_dir / "skills" / s for s in step.method.skills]
    call_with_supported(merge_adapters, adapters, step.method.method, step.out, params=params or None,
                        base=ctx.base, overwrite=True, **kw)
    return {}


def exec_cat(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """CAT (learned coefficients, or a static control with ``no_train``) via ``train_cat``."""
    from ..train.cat import train_cat

    adapters = [ctx.run_dir / "skills" / s for s in step.method.skills]
    call_with_supported(train_cat, ctx.base, adapters, composite_data(ctx, step), step.out,
                        data_dir=str(ctx.data_dir), overwrite=True, **with_device(ctx, composite_params(ctx, step)))
    return {}


def exec_lorahub(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """LoRA Hub weight search via ``run_lorahub``."""
    from ..search.lorahub import run_lorahub

    adapters = [ctx.run_dir / "skills" / s for s in step.method.skills]
    call_with_supported(run_lorahub, ctx.base, adapters, composite_data(ctx, step), step.out,
                        data_dir=str(ctx.data_dir), overwrite=True, **with_device(ctx, composite_params(ctx, step)))
    return {}


def exec_moe(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """Mixture of the skill LoRAs with trained routers via ``train_moe``."""
    from ..moe import train_moe

    adapters = [ctx.run_dir / "skills" / s for s in step.method.skills]
    call_with_supported(train_moe, ctx.base, adapters, composite_data(ctx, step), step.out,
                        data_dir=str(ctx.data_dir), overwrite=True, **with_device(ctx, composite_params(ctx, step)))
    return {}


def run_evaluate(ctx: "RunContext", adapter: Path | None, task_names: list[str], out: Path,
                 options: dict[str, Any]) -> dict[str, Any]:
    """One call of ``lorasoups.eval.runner.evaluate`` (writes one folder per task under ``out``)."""
    from ..eval.runner import evaluate

    opts = dict(options)
    if ctx.cfg.allow_code_execution:
        opts.setdefault("allow_code_execution", True)
    opts.setdefault("progress", True)
    opts = with_device(ctx, opts)
    return call_with_supported(evaluate, ctx.base, adapter=str(adapter) if adapter else None, tasks=task_names,
                               out=out, data_dir=str(ctx.data_dir), overwrite=True, **opts)


def split_eval_output(out: Path, task_of_label: dict[str, str], dest: dict[str, Path]) -> None:
    """Move the task folders of one evaluate() output (``out/<task>/``: ``results.json`` and
    ``samples.jsonl``) to one folder per task label (``dest[label]``, replaced)."""
    for label, task in task_of_label.items():
        src = out / task
        if not (src / "results.json").is_file():
            raise LorasoupsError(f"evaluation output {out}: no results for task {task!r}")
        if dest[label].exists():
            shutil.rmtree(dest[label])
        src.rename(dest[label])


def default_executors() -> dict[str, Callable[..., dict[str, Any]]]:
    """Stage -> executor for build stages, and ``evaluate`` -> :func:`run_evaluate` (the runner
    groups tasks and splits the outputs)."""
    return {"train": exec_train, "data_mix": exec_data_mix, "merge": exec_merge, "cat": exec_cat,
            "lorahub": exec_lorahub, "moe": exec_moe, "evaluate": run_evaluate}
