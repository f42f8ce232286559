"""``lorasoups inspect DIR``: summary and checks of a PEFT LoRA adapter folder."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print a LoRA adapter's base model, targets, ranks, scales and checks")
    p.add_argument("adapter", help="PEFT adapter folder")
    p.add_argument("--allow-pickle", action="store_true", help="accept a pickled adapter_model.bin")
    p.add_argument("--base", default=None,
                   help="base model (embedded name or local folder) to check the tensor names against "
                        "(default: the adapter's base_model_name_or_path when available locally)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.adapters import describe, read_adapter
    from ..io.attach import name_checks

    record = read_adapter(args.adapter, allow_pickle=args.allow_pickle)
    info = describe(record)
    info["checks"].update(name_checks(record, args.base))
    failed = any(v is False for v in info["checks"].values()) or bool(info["checks"].get("problems"))
    if args.json:
        print(json.dumps(info, indent=2))
        return 1 if failed else 0
    n = info["delta_fro_norm"]
    print(f"adapter         {info['path']}")
    print(f"base model      {info['base_model']}")
    print(f"target modules  {', '.join(info['target_modules'])}")
    print(f"ranks           {info['ranks']}   lora_alpha {info['lora_alpha']}   rsLoRA {info['use_rslora']}")
    if info["rank_pattern"] or info["alpha_pattern"]:
        print(f"rank_pattern    {len(info['rank_pattern'])} entries   alpha_pattern {len(info['alpha_pattern'])} entries")
    print(f"scale           {info['scales']}")
    print(f"modules         {info['num_modules']} (layers {info['layers']})")
    print(f"parameters      {info['num_parameters']:,} ({info['dtype']})")
    print(f"|ΔW|_F          min {n['min']:.4g}  mean {n['mean']:.4g}  max {n['max']:.4g}")
    print("checks")
    for k, v in info["checks"].items():
        if k == "problems":
            for msg in v:
                print(f"  [FAIL] {msg}")
            continue
        if isinstance(v, str):
            print(f"  [{'ok' if not v.startswith('WARN') else 'WARN'}] {k}: {v}")
            continue
        if isinstance(v, bool):  # (False == 0 in Python: booleans first)
            mark = "ok" if v else "FAIL"
        else:
            mark = "ok" if v == 0 else ("WARN" if isinstance(v, int) else "FAIL")
        print(f"  [{mark}] {k}" + ("" if isinstance(v, bool) else f": {v}"))
    return 1 if failed else 0
