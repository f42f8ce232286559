"""``lorasoups ls models|datasets|methods|tasks``."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list embedded models, datasets, merge methods or evaluation tasks")
    p.add_argument("what", choices=["models", "datasets", "methods", "tasks"])
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.set_defaults(func=run)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.what == "models":
        from ..models import EMBEDDED, embedded_path

        rows = [[n, "yes" if (embedded_path(n) / ".lorasoups-complete").exists() else "no", m.description]
                for n, m in sorted(EMBEDDED.items())]
        print(_table(rows, ["name", "prepared", "description"]))
    elif args.what == "datasets":
        from ..datasets import DATASETS, count_records, license_of
        from ..errors import DataError

        rows = []
        for n, d in DATASETS.items():
            try:
                cnt, lic = count_records(n, args.data_dir), license_of(n, args.data_dir)
            except DataError as e:
                cnt, lic = "missing", str(e)[:60]
            rows.append([n, cnt, d.kind, lic])
        print(_table(rows, ["name", "records", "kind", "license"]))
    elif args.what == "methods":
        import inspect as _inspect

        from ..methods import load_methods

        rows = []
        for n, m in load_methods().items():
            ps = ", ".join(f"{k}={'(required)' if v is _inspect.Parameter.empty else v}" for k, v in m.params.items())
            rows.append([n, m.kind, m.space, ps or "-", m.reference])
        print(_table(rows, ["name", "kind", "space", "parameters", "reference"]))
    elif args.what == "tasks":
        from ..eval.registry import load_tasks

        rows = [[n, str(t.version), t.kind, t.description] for n, t in load_tasks().items()]
        print(_table(rows, ["name", "version", "kind", "description"]))
    return 0
