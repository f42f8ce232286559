"""``lorasoups run CONFIG.yaml [--preset NAME[,NAME...]] [key=value ...] [--out DIR] [--from RUN_DIR]``: run an experiment."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run an experiment config: train skill LoRAs, build every merge, evaluate, report",
        description="Run an experiment: train the skill LoRAs, build every merge (DATA-MIX, linear, TIES, DARE, "
                    "CAT, LoRA Hub, MoE, ...), evaluate every method on every task, and write results.json/.md/"
                    ".csv/.png. Finished steps are cached by content hash: re-running resumes or does nothing.")
    p.add_argument("config", help="experiment config (YAML), e.g. configs/math_code.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, dotted paths, values read as YAML (e.g. train.max_steps=20 seed=1)")
    p.add_argument("--preset", default=None,
                   help="preset declared in the config (smoke, cpu, paper, ...); several apply left to right: cpu,cat_study")
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>_<preset>)")
    p.add_argument("--from", dest="seed_from", default=None, metavar="RUN_DIR",
                   help="start from another run folder: copy its finished outputs that this run shares (skill "
                        "LoRAs, methods, evaluations, with their cache markers) before running; it is only read")
    p.add_argument("--data-dir", default=None, help="data folder (default: config data_dir, $LORASOUPS_DATA, ../shared/data)")
    p.add_argument("--force", action="store_true", help="re-do every step even if cached")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None,
                   help="auto, cpu, cuda or cuda:N for every training and evaluation step (default: auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="autocast precision of training and evaluation (same as the overrides "
                        "train.precision=P eval.options.precision=P; default: the config's)")
    p.set_defaults(func=run)


def default_out(name: str, preset: str | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}_{preset}" if preset else name)
    return Path("runs") / safe


def superlinearity_summary(doc: dict) -> str:
    """One line per target column: which merges gain more over the base than the single skills
    together (LoRA Soups' super-linearity), and whether that excess is beyond noise."""
    sl = (doc.get("analysis") or {}).get("superlinearity") or []
    lines = ["super-linearity (gain of a merge over the base > sum of the single-skill gains; details in results.md):"]
    for col in dict.fromkeys(r["column"] for r in sl):
        rows = [r for r in sl if r["column"] == col]
        yes = [r for r in rows if r["superlinear"]]
        sig = [r["method"] for r in yes if r.get("excess_stderr") and r["excess"] >= 1.96 * r["excess_stderr"]]
        singles_ok = all(r.get("singles_all_positive", True) for r in rows)
        desc = ", ".join(r["method"] for r in yes) or "none"
        extra = f"; beyond 1.96 s.e.: {', '.join(sig) or 'none'}" if yes else ""
        caveat = "" if singles_ok else " (a single-skill gain is not positive: little to compare)"
        lines.append(f"  {col}: {desc}{extra}{caveat}")
    return "\n".join(lines) if sl else ""


def run(args: argparse.Namespace) -> int:
    from ..config import load_config

    # Some users write `--preset cpu` after key=value pairs; argparse handles that. A stray
    # option-looking override is a mistake worth a clear message.
    for ov in args.overrides:
        if "=" not in ov:
            from ..errors import ConfigError

            raise ConfigError(f"argument {ov!r}: overrides are key.path=value (e.g. train.max_steps=20)")
    overrides = list(args.overrides)
    if args.precision:
        overrides += [f"train.precision={args.precision}", f"eval.options.precision={args.precision}"]
    if args.device:
        from ..devices import resolve_device

        resolve_device(args.device)  # a bad value or a missing GPU fails before any work
    cfg = load_config(args.config, preset=args.preset, overrides=overrides)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ..experiment import Runner
    from ..report.tables import markdown_table

    out = Path(args.out) if args.out else default_out(cfg.name, cfg.preset)
    if not args.out:
        from ..paths import check_writable

        check_writable(out, what="run folder")
    runner = Runner(cfg, out, data_dir=args.data_dir, force=args.force, device=args.device,
                    seed_from=args.seed_from)
    doc = runner.run()
    print()
    print(markdown_table(doc))
    print(superlinearity_summary(doc))
    forest = f"  {out / 'forest.png'}" if (out / "forest.png").exists() else ""
    print(f"\nresults: {out / 'results.md'}  {out / 'results.csv'}  {out / 'results.png'}{forest}  {out / 'results.json'}")
    print(f"steps run this time: {len(runner.executed)} of {len(runner.steps)} (log: {out / 'steps.jsonl'})")
    return 0
