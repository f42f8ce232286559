"""``lorasoups`` entry point. Each subcommand lives in ``cli/<name>_cmd.py`` with
``add_parser(subparsers)``; heavy imports happen inside the command, so ``--help`` is fast."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from typing import Iterator

from ..errors import LorasoupsError
from ..registry import UnknownNameError

COMMANDS = ["models", "ls", "inspect", "train", "merge", "cat", "lorahub", "moe", "eval", "run", "validate", "report"]
# Commands that load models and write an output folder (--out; `run` checks its own default).
WORK_COMMANDS = {"train", "merge", "cat", "lorahub", "moe", "eval", "run"}


# Dependency warnings a user can do nothing about, hidden entirely (explicit -W settings still win):
# PEFT's PeftModel.__init__ reads ``model.is_gradient_checkpointing``, deprecated in transformers 5.
KNOWN_HARMLESS = [(r"`is_gradient_checkpointing` is deprecated", FutureWarning)]


@contextlib.contextmanager
def dependency_warnings_once() -> Iterator[None]:
    """Show each warning (same category and text) once per command, not once per call: e.g. PEFT's
    ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing``, which transformers 5 answers
    with a FutureWarning on every adapter load (13 times in a smoke run). Python's own "default"
    and "once" actions both forget what they showed whenever a library enters
    ``warnings.catch_warnings()`` (the per-module registries are cleared), so repeats are dropped
    here, where warnings are displayed. Explicit ``-W`` / ``PYTHONWARNINGS`` settings are left alone."""
    if sys.warnoptions:
        yield
        return
    seen: set[tuple[type, str]] = set()
    with warnings.catch_warnings():
        show = warnings.showwarning

        def show_once(message, category, filename, lineno, file=None, line=None):
            key = (category, str(message))
            if key in seen:
                return
            seen.add(key)
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_once
        for pattern, category in KNOWN_HARMLESS:
            warnings.filterwarnings("ignore", message=pattern, category=category)
        yield


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: the path(s) and the reason, e.g.
    ``/data/out: No space left on device`` (set ``LORASOUPS_TRACEBACK=1`` for the traceback)."""
    why = e.strerror or str(e)
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename} -> {e.filename2}: {why}"
    if e.filename is not None:
        return f"{e.filename}: {why}"
    return why


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="lorasoups", description="Skill composition by merging LoRA adapters.")
    p.add_argument("--version", action="version", version=f"lorasoups {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        modname = f"lorasoups.cli.{name}_cmd"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "method_args"):  # ``merge --method ties --density 0.5``: flags of the method's spec
        args.method_args, extra = extra, []
    if extra:
        # ``run CONFIG --preset cpu key=value``: overrides may follow the options too.
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet = bool(getattr(args, "quiet", False) or getattr(args, "no_progress", False))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(dependency_warnings_once())
            if args.command in WORK_COMMANDS:
                from ..paths import check_writable
                from ..progress import dependency_bars, progress_enabled

                # before any work: an unwritable --out fails now, not after training or generation
                if getattr(args, "out", None):
                    check_writable(args.out)
                    if getattr(args, "overwrite", None) is not None:  # commands that replace --out whole
                        from ..paths import check_replaceable

                        check_replaceable(args.out, args.overwrite)
                stack.enter_context(dependency_bars(progress_enabled(False if quiet else None)))
            rc = args.func(args)
    except (LorasoupsError, FileExistsError, UnknownNameError) as e:
        print(f"lorasoups {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if os.environ.get("LORASOUPS_TRACEBACK"):
            raise
        print(f"lorasoups {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
