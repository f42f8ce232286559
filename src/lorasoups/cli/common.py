"""Argument blocks shared by several ``lorasoups`` sub-commands (kept import-light so that
``lorasoups --help`` stays fast)."""

from __future__ import annotations

import argparse

DEFAULT_BASE = "smollm2-135m"


def add_base_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--base``: the base model (embedded name, local HF folder or hub id)."""
    p.add_argument("--base", default=DEFAULT_BASE,
                   help=f"base model: embedded name, HF folder or hub id (default {DEFAULT_BASE})")


def add_device_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, precisions=("auto", "fp32", "bf16", "fp16"),
                    precision_help: str = "auto = bf16 where the hardware has native bf16, else fp32 (fp16 on "
                                          "GPUs without bf16)") -> None:
    """``--device`` (auto|cpu|cuda|cuda:N) and ``--precision``, as on ``cat``/``moe``/``lorahub``."""
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--precision", choices=list(precisions), default="auto", help=precision_help)


def add_combine_io_args(p: argparse.ArgumentParser, *, adapters_help: str, data_help: str, out_help: str) -> None:
    """The inputs and output of a command that combines skill LoRAs using data (CAT, LoRA Hub, MoE):
    ``--base``, ``--adapters DIR...``, ``--data SPEC...`` (repeatable) and ``--out``."""
    add_base_arg(p)
    p.add_argument("--adapters", nargs="+", required=True, metavar="DIR", help=adapters_help)
    p.add_argument("--data", action="extend", nargs="+", default=[], metavar="SPEC", help=data_help)
    p.add_argument("--out", required=True, help=out_help)


def add_run_args(p: argparse.ArgumentParser, *, quiet_help: str = "no progress output") -> None:
    """How a learned procedure runs, not what it computes (not part of any option spec): ``--device``,
    ``--data-dir``, ``--allow-pickle``, ``--overwrite``, ``--quiet``."""
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin inputs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def run_kwargs(args: argparse.Namespace) -> dict:
    """The run keywords of :func:`add_run_args` for a procedure call."""
    return {"device": args.device, "data_dir": args.data_dir, "allow_pickle": args.allow_pickle,
            "overwrite": args.overwrite}
