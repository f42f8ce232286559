"""Reading experiment config files: YAML (``1e-4`` read as a float), ``include`` files, presets
(with ``extends``) and ``key.path=value`` overrides, resolved into one plain mapping.

Validation of the resolved mapping is :mod:`lorasoups.config` (and its checks,
:mod:`lorasoups.config_checks`).
"""

from __future__ import annotations

import copy
import re
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError
from .registry import suggest

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``2E5`` as floats (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """Parse YAML text (safe loader, ``1e-4`` read as a float).

    Raises:
        ConfigError: invalid YAML, naming ``where`` and the line.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}:{loc} invalid YAML: {getattr(e, 'problem', None) or e}") from None


def deep_merge(base: Any, over: Any) -> Any:
    """Return ``base`` with ``over`` merged in: mappings merge key by key (recursively), anything
    else (lists included) is replaced. Inputs are not modified."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = {k: copy.deepcopy(v) for k, v in base.items()}
        for k, v in over.items():
            out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and its ``include`` files (paths relative to the including file; later
    includes override earlier ones, the file itself overrides them all).

    Raises:
        ConfigError: missing file, invalid YAML, not a mapping, or an include cycle.
    """
    p = Path(path).expanduser().resolve()
    if p in _seen:
        raise ConfigError(f"{p}: include cycle: " + " -> ".join(str(s) for s in (*_seen, p)))
    if not p.is_file():
        where = f" (included from {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file {p} not found{where}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a YAML mapping, got {type(data).__name__}")
    inc = data.pop("include", None)
    if inc is None:
        return data
    incs = [inc] if isinstance(inc, str) else inc
    if not isinstance(incs, list) or not all(isinstance(i, str) for i in incs):
        raise ConfigError(f"{p}: 'include' must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for i in incs:
        merged = deep_merge(merged, load_raw(p.parent / i, (*_seen, p)))
    return deep_merge(merged, data)


def preset_list(preset: str | None) -> list[str]:
    """The preset names of a ``--preset`` value: one name or several, comma-separated (``cpu,cat_study``)."""
    if preset is None:
        return []
    return [x.strip() for x in str(preset).split(",")]


def resolve_preset(raw: Mapping[str, Any], preset: str | None, where: str = "config") -> dict[str, Any]:
    """Apply preset ``preset`` (following ``extends``) to ``raw``; drop the ``presets`` table.

    ``preset`` may name several presets, comma-separated (``cpu,cat_study``): each (with its
    ``extends`` chain) is merged over the result of the ones before it, left to right.

    Raises:
        ConfigError: unknown preset (with suggestions), a preset that is not a mapping, an
            ``extends`` cycle.
    """
    raw = dict(raw)
    presets = raw.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"{where}: 'presets' must be a mapping of name -> overrides")
    if preset is None:
        return raw
    names = preset_list(preset)
    if any(not n for n in names):
        raise ConfigError(f"{where}: preset {preset!r}: an empty name (give NAME or NAME,NAME,...)")
    out = raw
    for one in names:
        out = _apply_one_preset(out, presets, one, where)
    return out


def _apply_one_preset(raw: dict[str, Any], presets: Mapping[str, Any], preset: str, where: str) -> dict[str, Any]:
    chain: list[str] = []
    name: str | None = preset
    while name is not None:
        if name in chain:
            raise ConfigError(f"{where}: preset 'extends' cycle: {' -> '.join(chain + [name])}")
        if name not in presets:
            raise ConfigError(f"{where}: unknown preset {name!r}{suggest(name, list(presets))}; "
                              f"presets: {', '.join(sorted(presets)) or '(none)'}")
        body = presets[name]
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: preset {name!r} must be a mapping")
        chain.append(name)
        name = body.get("extends")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where}: preset {chain[-1]!r}: 'extends' must be a preset name")
    out = raw
    for n in reversed(chain):
        body = {k: v for k, v in (presets[n] or {}).items() if k != "extends"}
        out = deep_merge(out, body)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML
    (``3`` -> int, ``1e-4`` -> float, ``[a, b]`` -> list, ``true`` -> bool, ``~`` -> None).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, _, val = text.partition("=")
    parts = [k.strip() for k in key.strip().split(".")]
    if not key.strip() or any(not k for k in parts):
        raise ConfigError(f"override {text!r}: empty key")
    value = parse_yaml(val, f"override {text!r}") if val.strip() else ""
    return parts, value


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw config (intermediate mappings are created).

    Raises:
        ConfigError: a path that goes through a value that is not a mapping.
    """
    out = copy.deepcopy(dict(raw))
    for ov in overrides:
        parts, value = parse_override(ov)
        node: Any = out
        for i, k in enumerate(parts[:-1]):
            if k not in node or node[k] is None:
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"override {ov!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        cur = node.get(parts[-1])
        node[parts[-1]] = deep_merge(cur, value) if isinstance(cur, dict) and isinstance(value, dict) else value
    return out


def freeze(x: Any) -> Any:
    """Plain mappings/lists -> read-only mappings/tuples (the values of a validated config)."""
    if isinstance(x, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in x.items()})
    if isinstance(x, (list, tuple)):
        return tuple(freeze(v) for v in x)
    return x


def thaw(x: Any) -> Any:
    """Turn frozen mappings/tuples back into plain dicts/lists (JSON/YAML-serialisable)."""
    if isinstance(x, Mapping):
        return {k: thaw(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [thaw(v) for v in x]
    return x
