"""``lorasoups validate CONFIG.yaml [--preset NAME] [key=value ...]``: check a config, do no work."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="check an experiment config (every preset by default) and report all problems")
    p.add_argument("config", help="experiment config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `lorasoups run`")
    p.add_argument("--preset", default=None, help="check only this preset (default: the file alone and every preset)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import known_names, load_config, preset_names
    from ..errors import ConfigError

    known = known_names()
    presets = [args.preset] if args.preset else [None] + preset_names(args.config)
    problems: list[tuple[str, list[str]]] = []
    ok: list[str] = []
    for pr in presets:
        try:
            cfg = load_config(args.config, preset=pr, overrides=args.overrides, known=known)
        except ConfigError as e:
            # the same mistake shows in every preset: report it once, with the presets it affects
            for item in e.problems:
                where = pr or "the file itself"
                for j, (it, wh) in enumerate(problems):
                    if it == item:
                        problems[j] = (it, wh + [where])
                        break
                else:
                    problems.append((item, [where]))
            continue
        n_steps = len({s for m in cfg.methods for s in m.skills if m.kind != "trained"})
        ok.append(f"{pr or '(no preset)'}: {len(cfg.skills)} skills, {len(cfg.methods)} methods, "
                  f"{len(cfg.tasks)} tasks, {len(cfg.columns)} report columns; trains {n_steps} skill LoRAs")
    if problems:
        n = len(problems)
        lines = [f"  - {it}" + (f"   [{', '.join(wh)}]" if len(presets) > 1 else "") for it, wh in problems]
        raise ConfigError(f"{args.config}: {n} problem{'s' if n > 1 else ''}:\n" + "\n".join(lines),
                          problems=[it for it, _ in problems])
    print(f"{args.config}: valid")
    for line in ok:
        print(f"  {line}")
    return 0
