"""The options of :func:`lorasoups.eval.runner.evaluate`, declared once (see :mod:`lorasoups.spec`):
``lorasoups eval`` flags, config ``eval.options`` / per-task options and their validation come from here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from ..spec import Spec, opt

# Options a config may not set: the runner passes them itself.
RUNNER_ONLY = ("data_dir", "overwrite", "rescore", "progress")


class EvalOptions(Spec):
    limit: Optional[int] = opt(None, "items per task (per format for prompt_formats); none = all", ge=1)
    shots: Optional[int] = opt(None, "few-shot demonstrations (none: the task's; clamped to what it has)", ge=0)
    batch_size: int = opt(16, "prompts per generation / scoring batch", ge=1)
    max_new_tokens: Optional[int] = opt(None, "generation length (none: the task's)", ge=1, unit="tokens")
    allow_code_execution: bool = opt(False, "run generated programs in the sandbox (code tasks)")
    generate: bool = opt(True, "generate answers (false: likelihood metrics only, no execution)")
    likelihood: bool = opt(True, "score gold answers by likelihood (NLL metrics)")
    backend: Literal["hf", "vllm", "auto"] = opt("hf", "generation backend (auto: vllm when installed and on CUDA)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Optional[Literal["auto", "bf16", "fp32"]] = opt("auto", "autocast precision (an explicit bf16 wins)")
    prefix_cache: bool = opt(True, "reuse the KV cache of a shared prompt prefix")
    bf16: Optional[bool] = opt(None, "none: autocast to bf16 where the CPU supports it")
    merge_lora: bool = opt(True, "fold the LoRA into the base weights before generating")
    data_dir: Union[str, Path, None] = opt(None, "data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    timeout_s: Optional[float] = opt(None, "per program (none: the task's)", gt=0, unit="s")
    sandbox_workers: Optional[int] = opt(None, "parallel sandboxed programs (none: automatic)", ge=1)
    sandbox_isolation: Literal["auto", "bwrap", "bwrap-userns", "weak"] = opt(
        "auto", "sandbox isolation (weak is an explicit opt-in; docs/sandbox.md)")
    overwrite: bool = opt(False, "replace an existing output folder")
    rescore: Union[str, Path, None] = opt(None, "a previous output folder: re-score its completions, no model")
    progress: bool = opt(False, "show progress bars")
