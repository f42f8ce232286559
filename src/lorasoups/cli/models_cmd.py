"""``lorasoups models prepare NAME``."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="prepare embedded base models for offline use")
    msub = p.add_subparsers(dest="models_command", required=True)
    pp = msub.add_parser("prepare", help="build an embedded model's HF folder (cached) and print its path")
    pp.add_argument("name", help="embedded model name (see `lorasoups ls models`)")
    pp.add_argument("--force", action="store_true", help="rebuild even if cached")
    pp.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from ..models import prepare_model

    folder = prepare_model(args.name, force=args.force)
    sys.stderr.flush()  # progress bars of the conversion end before the path is printed on its own line
    print(folder, flush=True)
    return 0
