"""``lorasoups`` entry point. Each subcommand lives in ``cli/<name>_cmd.py`` with
``add_parser(subparsers)``; heavy imports happen inside the command, so ``--help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LorasoupsError
from ..registry import UnknownNameError

COMMANDS = ["models", "ls", "inspect", "train", "merge", "cat", "lorahub", "moe", "eval", "run", "validate", "report"]


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
    if extra:
        # ``run CONFIG --preset cpu key=value``: overrides may follow the options too.
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        rc = args.func(args)
    except (LorasoupsError, FileExistsError, UnknownNameError) as e:
        print(f"lorasoups {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
