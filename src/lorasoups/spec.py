"""Typed option specs: every option of a method, procedure, training or evaluation step declared once.

An option group is a :class:`Spec` subclass (a frozen pydantic model) whose fields carry type, range
(``ge``/``gt``/``le``/``lt``), choices (a ``Literal`` type), default, unit and help::

    class CatOptions(Spec):
        renamed = {"lr": "learning_rate"}
        learning_rate: float = opt(1e-3, "Adam learning rate of the coefficient logits", gt=0, unit="1/step")
        granularity: Literal["module", "layer", "global"] = opt("module", "one coefficient per ...")

From this one declaration come config validation (:meth:`Spec.problems`, every problem at once, with
"did you mean"), parsing (:meth:`Spec.parse`), CLI flags (:meth:`Spec.add_arguments` /
:meth:`Spec.from_args`), listings (:meth:`Spec.describe`) and out-of-range values for contract
tests (:meth:`Spec.bad_value`). Function bodies do no range checks of their own.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, TypeVar, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .registry import suggest

S = TypeVar("S", bound="Spec")
_UNSET: Any = object()


def opt(default: Any, help: str, *, unit: str | None = None, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, pattern: str | None = None, cli: bool = True) -> Any:
    """Declare one option: default, one-line help, optional unit, numeric bounds or a regex ``pattern``
    (strings).

    ``cli=False`` keeps the option out of generated command-line flags (e.g. tokenised data passed
    by the API only). Mutable defaults (lists, dicts) are copied per instance by pydantic.
    """
    extra: dict[str, Any] = {"cli": cli}
    if unit:
        extra["unit"] = unit
    strict = True if isinstance(default, bool) else None  # a yes/no option takes true/false, not "yes" or 1
    return Field(default, description=help, ge=ge, gt=gt, le=le, lt=lt, pattern=pattern, strict=strict,
                 json_schema_extra=extra)


@dataclass(frozen=True)
class OptionInfo:
    """One declared option, as listings and generated docs show it."""

    name: str
    type: str
    default: Any
    constraint: str  # "> 0", "0 ≤ x ≤ 1", "one of module, layer, global" or ""
    unit: str
    help: str


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(tp)):
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _strip_optional(tp)
    if get_origin(base) is Literal:
        name = "choice"
    elif get_origin(base) in (list, tuple):
        inner = get_args(base)
        name = f"list[{_type_name(inner[0])}]" if inner else "list"
    else:
        name = getattr(base, "__name__", str(base))
    return name + (" | None" if optional else "")


class Spec(BaseModel):
    """Base of every option group. Unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    #: old option name -> current name; an old name is refused with a message naming the new one.
    renamed: ClassVar[dict[str, str]] = {}
    #: old option name -> how to convert its value (appended to the "renamed" message), optional.
    rename_hints: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ validation
    @classmethod
    def problems(cls, values: Mapping[str, Any] | None, where: str = "options") -> list[str]:
        """Every problem of ``values`` as one line each, ``"<where>.<option>: <problem>"``.

        Checks: renamed (old) names, unknown names (with "did you mean"), types, ranges, choices.
        Returns ``[]`` when ``values`` is valid.
        """
        values = dict(values or {})
        out: list[str] = []
        known = list(cls.model_fields)
        for key in list(values):
            if key in cls.renamed:
                hint = f" ({cls.rename_hints[key]})" if key in cls.rename_hints else ""
                out.append(f"{where}.{key}: renamed to {cls.renamed[key]!r}{hint}")
                value = values.pop(key)
                if key not in cls.rename_hints and cls.renamed[key] not in values:
                    values[cls.renamed[key]] = value  # same meaning: check the value under its new name too
            elif key not in cls.model_fields:
                out.append(f"{where}.{key}: unknown option{suggest(key, known)}; known: {', '.join(known)}")
                values.pop(key)
        try:
            cls.model_validate(values)
        except ValidationError as e:
            for err in e.errors():
                loc = "".join(f".{x}" for x in err["loc"])  # empty for a check across options
                got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "literal_error" and err["loc"] and isinstance(err.get("input"), str):
                    choices, _ = _strip_optional(cls.model_fields[str(err["loc"][0])].annotation)
                    msg += suggest(err["input"], [str(a) for a in get_args(choices)])
                out.append(f"{where}{loc}: {msg[:1].lower() + msg[1:]}{got}")
        return out

    @classmethod
    def parse(cls: type[S], values: Mapping[str, Any] | None = None, where: str = "options", **more: Any) -> S:
        """Validated instance from ``values`` (plus keyword ``more``).

        Raises:
            ConfigError: listing every problem (see :meth:`problems`).
        """
        merged = {**dict(values or {}), **more}
        probs = cls.problems(merged, where)
        if probs:
            raise ConfigError("; ".join(probs), problems=probs)  # each problem names where.option
        return cls.model_validate(merged)

    # ------------------------------------------------------------------ listing
    @classmethod
    def describe(cls) -> list[OptionInfo]:
        """The declared options in declaration order."""
        out = []
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            out.append(OptionInfo(name, _type_name(f.annotation), f.default, _constraint(f), str(extra.get("unit", "")),
                                  f.description or ""))
        return out

    # ------------------------------------------------------------------ command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | Any, skip: tuple[str, ...] = ()) -> None:
        """Add one ``--option-name`` flag per declared option (help, choices and default shown).

        Flags default to "not given" so that :meth:`from_args` returns only what the user typed.
        Booleans get ``--x/--no-x``; lists take several values; ``X | None`` accepts ``none``.
        """
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            if name in skip or not extra.get("cli", True):
                continue
            flag = "--" + name.replace("_", "-")
            base, optional = _strip_optional(f.annotation)
            unit = f" [{extra['unit']}]" if extra.get("unit") else ""
            text = f"{f.description or ''}{unit} (default: {f.default!r})".replace("%", "%%")  # argparse formats help
            kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
            if base is bool and name.startswith("no_"):  # already a negation: a plain switch
                parser.add_argument(flag, action="store_const", const=True, **kw)
                continue
            if base is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
                continue
            if get_origin(base) is Literal:
                kw["choices"] = list(get_args(base)) + (["none"] if optional else [])
                kw["type"] = _conv(type(get_args(base)[0]), optional)
            elif get_origin(base) in (list, tuple):
                inner = (get_args(base) or (str,))[0]
                kw["nargs"] = "+"
                kw["type"] = _conv(inner if inner in (int, float, str) else str, False)
            elif base in (int, float, str):
                kw["type"] = _conv(base, optional)
            else:  # union types such as ``str | float``: pydantic converts the string
                kw["type"] = _conv(str, optional)
            parser.add_argument(flag, **kw)
        for old, new in cls.renamed.items():  # an old flag stops with a message naming the new one
            if old not in cls.model_fields and old not in skip:
                parser.add_argument("--" + old.replace("_", "-"), nargs="?", action=_Renamed, help=argparse.SUPPRESS,
                                    default=argparse.SUPPRESS, dest=f"_renamed_{old}",
                                    new_flag="--" + new.replace("_", "-")
                                    + (f" ({cls.rename_hints[old]})" if old in cls.rename_hints else ""))

    @classmethod
    def from_args(cls, ns: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """The options present on ``ns`` (only those the user gave)."""
        return {n: getattr(ns, n) for n in cls.model_fields if n not in skip and hasattr(ns, n)}

    # ------------------------------------------------------------------ contract tests
    @classmethod
    def bad_value(cls, name: str) -> Any:
        """A value that validation of option ``name`` must reject, or ``_UNSET`` if none is derivable
        (a free string, say). Used by the contract test over every registered spec."""
        f = cls.model_fields[name]
        base, _ = _strip_optional(f.annotation)
        for m in f.metadata:
            if isinstance(m, Ge):
                return m.ge - 1
            if isinstance(m, Gt):
                return m.gt - 1 if base is int else m.gt - abs(m.gt) - 1e-3
            if isinstance(m, Le):
                return m.le + 1
            if isinstance(m, Lt):
                return m.lt + 1
            if getattr(m, "pattern", None):
                return "?bogus value?"
        if get_origin(base) is Literal:
            return "bogus-" + "-".join(str(a) for a in get_args(base))
        if base in (int, float):
            return "not-a-number"
        if base is bool:
            return "maybe"
        return _UNSET


UNSET = _UNSET


class _Renamed(argparse.Action):
    """A renamed option's old flag: refuses, naming the new flag."""

    def __init__(self, *a: Any, new_flag: str = "", **kw: Any):
        self.new_flag = new_flag
        super().__init__(*a, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was renamed to {self.new_flag}")


class NoOptions(Spec):
    """The options of a method that takes none (any option given is an error)."""


def _conv(tp: Any, optional: bool):
    def conv(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        return tp(text)

    conv.__name__ = getattr(tp, "__name__", "value")  # argparse names the type in its errors
    return conv


def _constraint(f: Any) -> str:
    base, _ = _strip_optional(f.annotation)
    if get_origin(base) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(base))
    parts = []
    for m in f.metadata:
        if isinstance(m, Ge):
            parts.append(f"≥ {m.ge}")
        elif isinstance(m, Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, Le):
            parts.append(f"≤ {m.le}")
        elif isinstance(m, Lt):
            parts.append(f"< {m.lt}")
    return ", ".join(parts)
