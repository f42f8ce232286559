"""``lorasoups merge``: closed-form merge of LoRA adapters (linear, concat, TIES, DARE, ...).

The merge-run flags (``--weights``, ``--rank``, ``--svd``, ...) come from
:class:`~lorasoups.merge_options.MergeRunOptions`; the chosen method's own flags (``--density``,
``--inner``, ...) from its registered option spec, parsed once ``--method`` is known.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..merge_options import MergeRunOptions

    p = sub.add_parser("merge", help="merge LoRA adapters with a closed-form method (see: lorasoups ls methods)",
                       description="Merge PEFT LoRA adapters module by module. Exact methods (linear, concat, "
                                   "task_arithmetic) write a rank-sum LoRA; dense methods (ties, dare_*, "
                                   "magnitude_prune) need an SVD step (--rank K, default: largest input rank) "
                                   "or --full. The method's options are flags too, e.g. --method ties --density 0.5 "
                                   "(lorasoups ls methods lists every method's options).")
    p.add_argument("--method", required=True, help="merge method name (lorasoups ls methods)")
    p.add_argument("--adapters", required=True, nargs="+", metavar="DIR", help="PEFT LoRA adapter folders")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="method option, repeatable (--param density=0.5 is --density 0.5)")
    MergeRunOptions.add_arguments(p)
    p.add_argument("--full", action="store_true", help="write base + ΔW as a Hugging Face model folder (excludes --rank)")
    p.add_argument("--base", default=None, help="base model for --full (default: the adapters' base model)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickled adapter_model.bin inputs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true",
                   help="print only the summary (no progress bar; bars show only on a terminal, "
                        "or with LORASOUPS_PROGRESS=1)")
    p.set_defaults(func=run, method_args=[])


def method_flags(method: str, argv: list[str]) -> dict:
    """The options of merge method ``method`` given as flags in ``argv`` (from its option spec).

    Raises:
        ConfigError: unknown method, or a flag the method does not declare (naming its flags).
    """
    from ..errors import ConfigError
    from ..merge.driver import get_merge_method

    info = get_merge_method(method)
    if not argv:
        return {}

    class _Parser(argparse.ArgumentParser):
        def error(self, message):  # a bad or renamed flag: the command's usual error (exit 2)
            raise ConfigError(f"{self.prog}: {message}")

    mp = _Parser(prog=f"lorasoups merge --method {method}", add_help=False)
    info.options.add_arguments(mp)
    ns, rest = mp.parse_known_args(argv)
    if rest:
        flags = ", ".join("--" + n.replace("_", "-") for n in info.options.model_fields) or "none"
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)} (options of {method}: {flags})")
    return info.options.from_args(ns)


def run(args: argparse.Namespace) -> int:
    from ..io.hub import resolve_adapter_arg
    from ..merge.driver import merge_adapters, parse_param_args
    from ..merge_options import MergeRunOptions

    quiet = args.quiet

    def log(line: str) -> None:
        if not quiet or not line.startswith("["):
            print(line, flush=True)

    params = {**parse_param_args(args.param), **method_flags(args.method, args.method_args)}
    merge_adapters([resolve_adapter_arg(a) for a in args.adapters], args.method, args.out, params=params,
                   full=args.full, base=args.base, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
                   log=log, progress=False if quiet else None, **MergeRunOptions.from_args(args))
    return 0
