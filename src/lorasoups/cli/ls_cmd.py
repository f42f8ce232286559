"""``lorasoups ls models|datasets|methods|tasks``."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list embedded models, datasets, merge methods or evaluation tasks")
    p.add_argument("what", choices=["models", "datasets", "methods", "tasks"])
    p.add_argument("--data-dir", default=None, help="data folder (default: $LORASOUPS_DATA, then ../shared/data)")
    p.set_defaults(func=run)


# Options that steer where and how a procedure runs, not what it computes: not listed.
_PLUMBING = {"data_dir", "overwrite", "allow_pickle", "device", "progress", "verbose", "log_every",
             "logging_steps", "save_steps", "save_total_limit"}


def _table(rows: list[list[str]], header: list[str]) -> str:
    """Plain-text table; a cell may hold several lines (a wrapped column)."""
    split = [[str(c).split("\n") for c in r] for r in rows]
    widths = [max([len(h)] + [max(len(x) for x in r[i]) for r in split]) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in split:
        for k in range(max(len(c) for c in r)):
            lines.append("  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _methods_listing() -> str:
    """The methods table, then each method's options (type, default, range, unit, help) from its spec."""
    import inspect
    import textwrap

    from ..methods import load_methods

    rows, details = [], []
    for n, m in load_methods().items():
        if m.options is not None:
            opts = [o for o in m.options.describe() if o.name not in _PLUMBING]
            ps = ", ".join(f"{o.name}={o.default}" for o in opts)
            details.append(f"{n}:" + ("" if opts else " no options"))
            details += [f"  --{o.name.replace('_', '-')}  {o.type} = {o.default!r}"
                        + (f"  [{o.constraint}]" if o.constraint else "") + (f" {o.unit}" if o.unit else "")
                        + f"\n      {o.help}" for o in opts]
        else:  # registered without an option spec yet: its keyword parameters
            ps = ", ".join(f"{k}={'(required)' if v is inspect.Parameter.empty else v}"
                           for k, v in m.params.items() if k not in _PLUMBING)
        rows.append([n, m.kind, m.space, "\n".join(textwrap.wrap(ps, 60)) or "-", "\n".join(textwrap.wrap(m.reference, 48))])
    table = _table(rows, ["name", "kind", "space", "parameters", "reference"])
    return table + "\n\nOptions (a config's `params:`; also command-line flags of `lorasoups merge` or of the method's own command):\n" + "\n".join(details)


def run(args: argparse.Namespace) -> int:
    if args.what == "models":
        from ..models import EMBEDDED, embedded_path, is_prepared

        rows = [[n, "yes" if is_prepared(n) else ("outdated" if embedded_path(n).exists() else "no"), m.description]
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
        print(_methods_listing())
    elif args.what == "tasks":
        from ..eval.registry import load_tasks

        rows = [[n, str(t.version), t.kind, t.description] for n, t in load_tasks().items()]
        print(_table(rows, ["name", "version", "kind", "description"]))
    return 0
