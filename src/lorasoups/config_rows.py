"""Config rows that depend on other rows: ``like: <label>`` method rows, rows linked to another
row by their method's registration (e.g. the controls of a CAT row), and the evaluation tasks a
preset switched off. Used by :func:`lorasoups.config.build_config`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from .config_checks import Problems
from .config_load import deep_merge
from .registry import suggest

if TYPE_CHECKING:
    from .config import MethodConfig

LIKE_KEYS = ("method", "skills", "skill", "data", "params")  # what `like: <label>` copies from that row


def resolve_like(p: Problems, methods_raw: Mapping[str, Any]) -> dict[str, Any]:
    """Method bodies with ``like: <label>`` replaced by that row's :data:`LIKE_KEYS` (its
    ``method`` defaulting to its label) with the body's own keys merged over them (chains allowed)."""
    out: dict[str, Any] = {}

    def resolve(label: str, chain: tuple[str, ...]) -> Any:
        body = methods_raw[label]
        if not isinstance(body, Mapping) or "like" not in body:
            return body
        ref = body["like"]
        path = f"methods.{label}.like"
        if not isinstance(ref, str) or ref not in methods_raw:
            p.add(path, f"{ref!r} is not a method label of this config{suggest(str(ref), list(methods_raw))}")
            return {k: v for k, v in body.items() if k != "like"}
        if ref in chain:
            p.add(path, f"cycle: {' -> '.join((*chain, ref))}")
            return {k: v for k, v in body.items() if k != "like"}
        base = resolve(ref, (*chain, ref))
        base = base if isinstance(base, Mapping) else {}
        start = {k: base[k] for k in LIKE_KEYS if k in base}
        start.setdefault("method", ref)
        return deep_merge(start, {k: v for k, v in body.items() if k != "like"})

    for label in methods_raw:
        out[label] = resolve(str(label), (str(label),))
    return out


def linked_rows(p: Problems, methods: list["MethodConfig"], methods_raw: Mapping[str, Any], registry: Mapping[str, Any],
            seed: int) -> list["MethodConfig"]:
    """Rows whose method registers a ``link`` (:attr:`lorasoups.methods.MethodInfo.link`), filled in
    from the other rows (e.g. the fresh-LoRA control from its CAT row); their problems added to ``p``."""
    rows = {m.label: m for m in methods}
    out = []
    for m in methods:
        info = registry.get(m.method)
        if info is not None and info.link is not None:
            body = methods_raw.get(m.label)
            m, probs = info.link(m, body=dict(body) if isinstance(body, Mapping) else {}, rows=rows, seed=seed,
                                 path=f"methods.{m.label}")
            p.extend(probs)
        out.append(m)
    return out


def disabled_tasks(raw: Mapping[str, Any]) -> set[str]:
    """Labels of the tasks declared with ``enabled: false``."""
    ev = raw.get("eval") if isinstance(raw.get("eval"), Mapping) else {}
    tasks = ev.get("tasks") if isinstance(ev.get("tasks"), Mapping) else {}
    return {str(k) for k, v in tasks.items() if isinstance(v, Mapping) and v.get("enabled", True) is False}
