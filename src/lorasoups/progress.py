"""Progress bars with ETA (tqdm) on stderr, shown only to a person watching a terminal.

A bar is shown when the caller allows progress (``progress`` is not False: no ``--quiet``) and
standard error is a terminal. ``LORASOUPS_PROGRESS`` overrides the terminal test: ``1``/``always``
shows bars even when stderr is a file or a pipe (e.g. to watch a log), ``0``/``never`` hides them.
Bars never go to stdout or to any results file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

ENV = "LORASOUPS_PROGRESS"
_ON = ("1", "always", "on", "true", "yes")
_OFF = ("0", "never", "off", "false", "no")


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw bars: False when ``progress`` is False; else ``$LORASOUPS_PROGRESS`` if set
    (``1``/``always`` or ``0``/``never``), else whether stderr is a terminal."""
    if progress is False:
        return False
    env = os.environ.get(ENV, "").strip().lower()
    if env in _ON:
        return True
    if env in _OFF:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def bar(total: int | None, desc: str, *, progress: bool | None = None, unit: str = "it",
        leave: bool = True) -> Any:
    """A ``tqdm`` bar on stderr (rate and ETA), disabled per :func:`progress_enabled`.

    Args:
        total: number of steps (None: unknown, no ETA).
        desc: short label, e.g. ``"gsm8k generate"``.
        progress: the caller's switch (False: never; None/True: terminal or ``$LORASOUPS_PROGRESS``).
        unit: step unit shown in the rate (``item``, ``module``, ...).
        leave: keep the finished bar on screen (a one-line record of the step's time and rate).

    Returns:
        a ``tqdm`` instance (use ``update(n)``, ``close()`` or ``with``); a disabled one is a no-op.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, dynamic_ncols=True,
                mininterval=0.5, disable=not progress_enabled(progress))


@contextlib.contextmanager
def printing_above(b: Any) -> Iterator[None]:
    """Print lines (to stdout or stderr) without breaking bar ``b``: the bar is cleared, the
    lines are printed, the bar is redrawn."""
    if getattr(b, "disable", True):
        yield
        return
    with b.external_write_mode():
        yield


@contextlib.contextmanager
def dependency_bars(enabled: bool) -> Iterator[None]:
    """While the block runs, hide the bars that transformers and huggingface_hub draw (weight
    loading, shard writing) unless ``enabled``; their previous state is restored afterwards."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    hub_was_off = are_progress_bars_disabled()
    tf_was_on = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            tf_logging.enable_progress_bar()
