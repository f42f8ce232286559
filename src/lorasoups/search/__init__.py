"""Gradient-free searches over merge weights (LoRA Hub)."""

from __future__ import annotations

__all__ = ["run_lorahub"]


def __getattr__(name: str):  # lazy: keep ``import lorasoups.search`` cheap
    if name == "run_lorahub":
        from .lorahub import run_lorahub

        return run_lorahub
    raise AttributeError(name)
