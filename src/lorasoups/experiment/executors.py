"""What each step does: skill training, closed-form merges, any registered learned procedure (one
contract, no per-method code) and evaluation.

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
    info = reg.get(step.method.method) if step.method.method in reg else None
    if info is not None and ("seed" in info.params or info.kind != "merge"):
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


def exec_procedure(step: "Step", ctx: "RunContext") -> dict[str, Any]:
    """A learned procedure (CAT, LoRA Hub, MoE, DATA-MIX, or any registered later) by the one contract
    ``fn(base, adapters, data, out, *, seed, device, data_dir, overwrite, **params)`` of its
    registration (:func:`lorasoups.methods.register_method`); no per-method code here."""
    from .plan import method_info

    info = method_info(step.method)
    adapters = [ctx.run_dir / "skills" / s for s in step.method.skills] if info.uses_adapters else []
    run = {"data_dir": str(ctx.data_dir), "overwrite": True}
    if info.resumable:
        run["resume"] = step.extra.get("resume", False)
    info.fn(ctx.base, adapters, composite_data(ctx, step), step.out, **run,
            **with_device(ctx, composite_params(ctx, step)))
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
    """Executors by stage: ``train`` (skill LoRAs), ``merge`` (closed-form), ``procedure`` (every
    learned procedure, through its registration) and ``evaluate`` -> :func:`run_evaluate` (the
    runner groups tasks and splits the outputs). A stage without its own executor (``cat``,
    ``moe``, ...) runs ``procedure``."""
    return {"train": exec_train, "merge": exec_merge, "procedure": exec_procedure, "evaluate": run_evaluate}
