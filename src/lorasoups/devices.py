"""Device and precision arguments shared by every command (``--device``, ``--precision``).

Thin wrappers over torch conventions: ``auto`` is ``cuda`` when ``torch.cuda.is_available()``,
else ``cpu``; ``cuda:N`` names one GPU. Nothing here moves tensors.
"""

from __future__ import annotations

import re

from .errors import ConfigError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(device: str | None = "auto") -> str:
    """Turn a ``--device`` value into a torch device string (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ConfigError: not auto|cpu|cuda|cuda:N, or a CUDA device while CUDA is not available, or
            an index beyond ``torch.cuda.device_count()``.
    """
    d = "auto" if device in (None, "") else str(device).strip().lower()
    if not _DEVICE_RE.match(d):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    import torch

    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                              f"built for CUDA {torch.version.cuda}); use --device cpu or auto")
        if ":" in d and int(d.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return d


def device_type(device: str) -> str:
    """``cuda`` for ``cuda``/``cuda:N``, else the device string (``cpu``)."""
    return "cuda" if str(device).startswith("cuda") else str(device)


def eval_bf16(precision: str | None) -> bool | None:
    """The evaluation ``bf16`` option for a ``--precision`` value: auto -> None (bf16 autocast on
    CUDA with bf16 support and on CPUs with native bf16), bf16 -> True, fp32 -> False.

    Raises:
        ConfigError: another value (fp16 is not offered for evaluation: its range clips logits).
    """
    if precision in (None, "auto"):
        return None
    if precision in ("bf16", "fp32"):
        return precision == "bf16"
    raise ConfigError(f"evaluation precision {precision!r}: choose auto, bf16 or fp32")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty set where unavailable)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: str = "cpu", cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The one bf16 probe: True when ``device`` computes bf16 natively — a CUDA device with
    ``torch.cuda.is_bf16_supported()``, or a CPU with ``avx512_bf16`` / ``amx_bf16`` flags. Training
    (:func:`lorasoups.train.loop.resolve_precision`) and evaluation (``eval.generate``) both ask it."""
    if device_type(device) == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags(cpuinfo))
