"""Harness-owned checks: the host decides whether a program's asserts hold.

A check such as ``assert f(1, 2) == 3`` is split here, on the host, into the expressions the
sandboxed program must evaluate (``f(1, 2)`` and ``3``) and the operation the host applies to
their values. The program side sends the values back as tagged data (exact built-in types only;
anything else arrives as ``other``); :func:`decode` rebuilds them as genuine host objects and
:func:`check_passes` applies the operation. An object whose ``__eq__`` always returns True
therefore fails (it is not a built-in value), and a check that never ran (early exit) has no value.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Any

from ..errors import LorasoupsError

_OPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b, ast.Is: lambda a, b: _is(a, b), ast.IsNot: lambda a, b: not _is(a, b)}


def _is(a: Any, b: Any) -> bool:
    """``is`` across the process boundary: identity for None/True/False, same type and value otherwise."""
    if a is None or b is None or type(a) is bool or type(b) is bool:
        return a is b
    return type(a) is type(b) and a == b


class CheckError(LorasoupsError):
    """A check is not a single ``assert`` statement."""


class Undecodable(ValueError):
    """A value the program sent is malformed or not a built-in value."""


@dataclass(frozen=True)
class Check:
    """One assert: ``exprs`` are evaluated by the program, ``op`` applied by the host.

    ``op`` is ``"truth"`` (one expression, must be truthy), ``"not"`` (must be falsy) or the
    name of a comparison (``Eq``, ``Lt``, ``In``, ...) applied to two expressions.
    """

    source: str
    op: str
    exprs: tuple[str, ...]


def parse_check(source: str) -> Check:
    """Split ``assert EXPR[, msg]`` into expressions and an operation.

    Raises:
        CheckError: ``source`` is not exactly one ``assert`` statement (or does not parse).
    """
    try:
        tree = ast.parse(source.strip())
    except SyntaxError as e:
        raise CheckError(f"check {source!r} does not parse: {e.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise CheckError(f"check {source!r} is not a single assert statement")
    test = tree.body[0].test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS:
        return Check(source, type(test.ops[0]).__name__, (ast.unparse(test.left), ast.unparse(test.comparators[0])))
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return Check(source, "not", (ast.unparse(test.operand),))
    return Check(source, "truth", (ast.unparse(test),))


def decode(enc: Any, depth: int = 0) -> Any:
    """Rebuild a value from the program side's tagged encoding.

    Raises:
        Undecodable: malformed data, or a value that is not an exact built-in (``other``).
    """
    if depth > 40 or not isinstance(enc, dict) or not isinstance(enc.get("t"), str):
        raise Undecodable("malformed value")
    t, v = enc["t"], enc.get("v")
    try:
        if t == "none":
            return None
        if t == "bool" and isinstance(v, bool):
            return v
        if t == "int" and isinstance(v, str) and len(v) <= 5000:
            return int(v)
        if t == "float" and isinstance(v, str) and len(v) <= 64:
            return float(v)
        if t == "complex" and isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v):
            return complex(float(v[0]), float(v[1]))
        if t == "str" and isinstance(v, str):
            return v
        if t == "bytes" and isinstance(v, str):
            return bytes.fromhex(v)
        if t in ("list", "tuple", "set", "frozenset") and isinstance(v, list):
            items = [decode(x, depth + 1) for x in v]
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[t](items)
        if t == "dict" and isinstance(v, list):
            out = {}
            for pair in v:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise Undecodable("malformed dict")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
    except (ValueError, TypeError, OverflowError) as e:
        if isinstance(e, Undecodable):
            raise
        raise Undecodable(f"malformed {t} value") from None
    if t == "other":
        raise Undecodable(f"a {str(enc.get('type', '?'))[:100]} object, not a built-in value")
    raise Undecodable(f"malformed {t[:20]} value")


def check_passes(check: Check, values: list[Any]) -> tuple[bool, str | None]:
    """Apply ``check.op`` to the encoded ``values`` (one per expression). Returns (passed, why not)."""
    if not isinstance(values, list) or len(values) != len(check.exprs):
        return False, "malformed check values"
    try:
        vals = [decode(v) for v in values]
    except Undecodable as e:
        return False, f"{e}"
    try:
        if check.op == "truth":
            ok = bool(vals[0])
        elif check.op == "not":
            ok = not vals[0]
        else:
            ok = bool(_OPS[getattr(ast, check.op)](vals[0], vals[1]))
    except (TypeError, ValueError, AttributeError, RecursionError) as e:
        return False, f"{type(e).__name__}: {e}"
    return ok, None if ok else "assertion failed"


def describe_value(enc: Any) -> dict[str, Any]:
    """``{"type", "repr", "number", "str"?}`` for a returned value (``number``: a float for an
    exact int/float/bool or a Fraction/Decimal, else None)."""
    if not isinstance(enc, dict):
        return {"type": "?", "repr": "<malformed>", "number": None}
    try:
        v = decode(enc)
    except Undecodable:
        return {"type": str(enc.get("type", "?"))[:100], "repr": str(enc.get("repr", ""))[:2000], "number": None}
    out: dict[str, Any] = {"type": str(enc.get("type") or type(v).__name__), "repr": repr(v)[:2000], "number": None}
    if type(v) in (int, float, bool):
        try:
            num = float(v)
        except OverflowError:
            num = None
        out["number"] = num if num is not None and math.isfinite(num) else None
    if isinstance(v, str):
        out["str"] = v[:2000]
    return out
