"""Model cards (``README.md``) for every output adapter folder, written with huggingface_hub's
``ModelCard`` / ``ModelCardData`` (YAML metadata block + markdown body), and recorded base models.

A card states the base model (canonical hub id), the method, the weights or the CAT coefficient
summary, the training data with SHA-256 checksums, and metrics when there are any.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

CARD_NAME = "README.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def render_model_card(*, base_model: str | None, method: str, description: str = "",
                      adapters: Sequence[str] = (), weights: Sequence[float] | None = None,
                      coefficients: Mapping[str, Mapping[str, Any]] | None = None,
                      params: Mapping[str, Any] | None = None,
                      data: Sequence[Mapping[str, Any]] = (),
                      metrics: Mapping[str, Any] | None = None) -> str:
    """The text of a model card (YAML front matter via ``ModelCardData``, markdown body).

    Args:
        base_model: canonical base id (see :func:`lorasoups.models.canonical_base_id`).
        method: ``skill_lora``, ``data_mix``, a merge method name, ``cat``, ``lorahub``, ``moe``.
        adapters: input adapter folders (merges and learned combinations).
        weights: one weight per input adapter (linear-type merges, LoRA Hub).
        coefficients: CAT's per-adapter coefficient summary ``{name: {mean, min, max, ...}}``.
        params: other method parameters.
        data: training data sources ``{"name"/"file", "sha256", ...}``.
        metrics: metric name -> value (training/validation losses, evaluation results).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from ..models import canonical_base_id

    base = canonical_base_id(base_model)
    cd = ModelCardData(base_model=base if base and "/" in base and not os.path.isabs(base) else None,
                       library_name="peft" if method != "moe" else None,
                       tags=["lorasoups", "lora", method])
    lines = [f"# {method} adapter (lorasoups)", ""]
    if description:
        lines += [description, ""]
    lines += [f"- **Base model:** `{base}`", f"- **Method:** `{method}`"]
    if adapters:
        lines += ["", "## Inputs", ""]
        for i, a in enumerate(adapters):
            w = f" (weight {_fmt(weights[i])})" if weights is not None and i < len(weights) else ""
            lines.append(f"- `{a}`{w}")
    elif weights is not None:
        lines.append(f"- **Weights:** {', '.join(_fmt(w) for w in weights)}")
    if coefficients:
        lines += ["", "## CAT coefficients", "", "| adapter | mean | min | max |", "|---|---|---|---|"]
        for name, s in coefficients.items():
            lines.append(f"| {name} | {_fmt(s.get('mean'))} | {_fmt(s.get('min'))} | {_fmt(s.get('max'))} |")
    if params:
        lines += ["", "## Parameters", ""] + [f"- `{k}`: {_fmt(v)}" for k, v in sorted(params.items())]
    if data:
        lines += ["", "## Training data", "", "| data | sha256 |", "|---|---|"]
        for d in data:
            name = d.get("name") or d.get("file") or d.get("spec") or "?"
            lines.append(f"| {name} | `{d.get('sha256') or '-'}` |")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if v is not None]
    lines += ["", "Load with PEFT: `PeftModel.from_pretrained(base_model, this_folder)`"
              if method != "moe" else "Load with `lorasoups.moe.load_moe_model(base_model, this_folder)`", ""]
    card = ModelCard.from_template(cd, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
                                   body="\n".join(lines))
    return str(card)


def data_checksums(specs: Sequence[Any], data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """``[{"name", "file", "sha256"}]`` for data specs (catalogue names or files); a spec that
    cannot be resolved (or a non-string, e.g. tokenised examples) is listed without a checksum."""
    from ..provenance import sha256_file

    out: list[dict[str, Any]] = []
    for s in specs:
        if not isinstance(s, str):
            out.append({"name": type(s).__name__, "sha256": None})
            continue
        try:
            from ..train.data import parse_data_spec, resolve_path

            f, _ = resolve_path(parse_data_spec(s), data_dir)
            out.append({"name": s, "file": str(f), "sha256": sha256_file(f)})
        except Exception:  # noqa: BLE001 - the card still lists the spec
            out.append({"name": s, "sha256": None})
    return out


def write_model_card(folder: str | os.PathLike, **fields: Any) -> Path:
    """Write ``folder/README.md`` (see :func:`render_model_card` for the fields). Not atomic on its
    own: call it inside the output's :func:`lorasoups.paths.atomic_dir`."""
    p = Path(folder) / CARD_NAME
    p.write_text(render_model_card(**fields), encoding="utf-8")
    return p


def recorded_base(adapter: str | os.PathLike) -> str | None:
    """The base model an adapter folder records: ``base_model_name_or_path`` of a PEFT folder's
    ``adapter_config.json`` or ``base_model`` of an MoE folder's ``moe_config.json``; None if absent."""
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("moe_config.json", "base_model")):
        f = Path(adapter) / name
        if f.is_file():
            try:
                v = json.loads(f.read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError, AttributeError):
                return None
            return str(v) if v else None
    return None
