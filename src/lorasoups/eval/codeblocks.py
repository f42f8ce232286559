"""Programs in model completions: Markdown code fences, the block that defines what a task calls,
and the stop rule that ends generation once such a block is complete.

A completion may hold several fenced blocks: an import-only block, an example call, a helper,
and the solution. The rules here pick the block that *defines the function the task calls*
(``solution`` for PAL math programs, the function the asserts call for MBPP) and keep the
imports and definitions written in the other blocks, so that splitting a program over several
fences does not change its result. Generation stops only once the closed blocks define every
name the task calls (:class:`StopAfterDefinition`), never at the first closed fence.
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from dataclasses import dataclass
from typing import Iterable, Sequence

# An opening fence (anywhere: models write "Here: ```python"), the content, and a closing fence at
# the start of a line, or the end of the text for an unclosed last block (a completion cut by the
# token budget).
_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*(```)|\Z)", re.S | re.M)
_CODE_START_RE = re.compile(r"^(def |class |import |from \S+ import |@)", re.M)
_CODEISH_RE = re.compile(r"^(def |class |import |from |@|#|if __name__|[A-Za-z_][\w.]*\s*(=|\(|\[|\+=|-=))")
_DEF_RE = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(|^[ \t]*class[ \t]+(\w+)\b", re.M)
_IMPORT_LINE_RE = re.compile(r"^(import \S|from \S+ import )")


@dataclass(frozen=True)
class Block:
    """One fenced block: ``code`` (the content, without the fences), ``lang`` (the info string's
    first word), ``start``/``end`` (character offsets of the whole block in the text; ``end`` is
    just after the closing fence) and ``closed`` (False for an unclosed last block)."""

    code: str
    lang: str
    start: int
    end: int
    closed: bool


def fenced_blocks(text: str) -> list[Block]:
    """Every Markdown code fence in ``text``, in order, including empty ones; an unclosed last
    fence counts up to the end of the text (``closed=False``)."""
    out = []
    for m in _FENCE_RE.finditer(text or ""):
        closed = m.group(3) is not None
        code = m.group(2)
        if closed and code.endswith("\n"):
            code = code[:-1]
        out.append(Block(code, m.group(1), m.start(), m.end(), closed))
    return out


def code_blocks(text: str) -> list[str]:
    """Contents of the non-empty Markdown code fences in ``text``, in order; an unclosed last fence
    (a completion cut off by the token limit) counts up to the end of the text."""
    return [b.code for b in fenced_blocks(text) if b.code.strip()]


def defined_names(code: str) -> set[str]:
    """Names of the functions and classes ``code`` defines (``def NAME(`` / ``class NAME``, at any
    indentation; found with a pattern, so code that does not compile still counts)."""
    return {a or b for a, b in _DEF_RE.findall(code or "")}


def called_functions(code: str, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the plain functions (or classes) that ``code`` calls (``f(...)``, not
    ``obj.f(...)``), outermost call first, without builtins and without ``exclude``; when every
    called name is a builtin, those (MBPP task 126 tests its own ``sum``).

    Raises:
        SyntaxError: ``code`` does not parse.
    """
    names: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in names:
            names.append(node.func.id)
    names = [n for n in names if n not in set(exclude)]
    own = [n for n in names if not hasattr(builtins, n)]
    return own or names


def top_level_names(code: str) -> set[str]:
    """Names that ``code`` binds at top level (defs, classes, imports, assignments); the
    function/class pattern of :func:`defined_names` when it does not parse."""
    try:
        tree = ast.parse(textwrap.dedent(code or ""))
    except (SyntaxError, ValueError):
        return defined_names(code)
    out: set[str] = set()
    for st in tree.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(st.name)
        elif isinstance(st, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in st.names)
        elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


class StopAfterDefinition:
    """A stop rule for generation: the completion can be complete once its *closed* fenced blocks
    together define every name in ``names``; the rule then returns the end of that block (the text
    after it is dropped), else None (keep generating).

    A first block with only imports, an example call or a helper therefore does not end the
    completion. Calling the rule on every prefix of a text gives the same cut as calling it on the
    whole text (a block, once closed, stays closed), so token-by-token generation and truncating a
    finished text agree.

    Args:
        names: function/class names the task calls (``("solution",)``; MBPP: the asserts' calls).
    """

    def __init__(self, names: str | Iterable[str]):
        self.names = (names,) if isinstance(names, str) else tuple(names)
        if not self.names:
            raise ValueError("StopAfterDefinition needs at least one name")

    def __call__(self, text: str) -> int | None:
        need = set(self.names)
        for b in fenced_blocks(text):
            if not b.closed:
                return None
            need -= defined_names(b.code)
            if not need:
                return b.end
        return None

    def __repr__(self) -> str:
        return f"StopAfterDefinition({', '.join(self.names)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StopAfterDefinition) and other.names == self.names

    def __hash__(self) -> int:
        return hash(self.names)


def _compiles(code: str) -> bool:
    try:
        compile(code, "<extracted>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def _trim_to_compilable(code: str, max_tries: int = 60) -> str | None:
    """Drop trailing lines until the code compiles (models often end with prose)."""
    lines = code.rstrip().splitlines()
    for _ in range(max_tries):
        if not lines:
            return None
        c = "\n".join(lines)
        if _compiles(c):
            return c + "\n"
        lines.pop()
    return None


def _unfenced_code(text: str, must_define: str | None) -> str | None:
    """Code written without a fence: from the first ``def``/``import`` line (the one defining
    ``must_define`` when given) while lines are indented, blank or look like code."""
    if must_define:
        m = re.search(rf"^[ \t]*def\s+{re.escape(must_define)}\s*\(", text, re.M)
        if not m:
            return None
        # keep imports/helpers written just before the function
        start = m.start()
        head = text[:start].splitlines()
        keep: list[str] = []
        for line in reversed(head):
            if line.strip() and not _CODEISH_RE.match(line) and not line.startswith((" ", "\t")):
                break
            keep.insert(0, line)
        lines = keep + text[start:].splitlines()
    else:
        m = _CODE_START_RE.search(text)
        if not m:
            return None
        lines = text[m.start():].splitlines()
    out: list[str] = []
    for line in lines:
        if line.strip() == "" or line.startswith((" ", "\t")) or _CODEISH_RE.match(line):
            out.append(line)
        else:
            break
    code = "\n".join(out).strip("\n")
    if not code:
        return None
    return _trim_to_compilable(textwrap.dedent(code))


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) for n in ast.walk(node))


def definitions_only(code: str, skip: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """The top-level statements of ``code`` that only define things: imports, ``def``/``class``
    (with their decorators) and assignments without calls (``R = 3``). Example calls, prints,
    asserts and anything that runs code are dropped, as are definitions of names in ``skip``.
    Code that does not parse keeps only its import lines."""
    code = textwrap.dedent(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return "\n".join(ln for ln in code.splitlines() if _IMPORT_LINE_RE.match(ln))
    lines = code.splitlines()
    keep = []
    for st in tree.body:
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            ok = True
        elif isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            ok = st.name not in skip
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            ok = st.value is not None and not _has_call(st) and not (names & skip)
        else:
            ok = False
        if ok:
            first = min([st.lineno] + [d.lineno for d in getattr(st, "decorator_list", [])])
            keep.append("\n".join(lines[first - 1:st.end_lineno]))
    return "\n".join(keep)


def _with_context(blocks: Sequence[Block], i: int) -> str:
    """Block ``i``'s code, preceded by the imports and definitions of the blocks before it (helpers
    and imports a model put in an earlier fence); the chosen block's own definitions win. Later
    blocks are left out: generation stops at the chosen block (:class:`StopAfterDefinition`)."""
    main = textwrap.dedent(blocks[i].code).strip("\n")
    own = defined_names(main)
    ctx = [d for b in blocks[:i] for d in [definitions_only(b.code, own)] if d.strip()]
    return "\n\n".join(ctx + [main]) + "\n"


def extract_code(text: str, must_define: str | Sequence[str] | None = None, *,
                 fallback: bool | None = None) -> tuple[str | None, str]:
    """Extract a program from a completion.

    Rules, in order:

    1. among the fenced blocks, the first that defines ``must_define`` (its first name when a
       sequence: the function the task calls), else the first that defines any of its names;
    2. without such a block, code written without a fence, from ``def <name>(`` (with the
       import/helper lines just before it) up to the first prose line, trimmed until it compiles;
    3. with ``fallback`` (default: when no name is required), the first block that defines a
       function or class, else the first block, else unfenced code from the first ``def``/
       ``import`` line.

    A block chosen by rule 1 or 3 gets the imports, definitions and call-free assignments of the
    blocks before it prepended (example calls, prints and asserts in those blocks are dropped), so
    a program split over several fences runs as one; later blocks are not used (generation stops
    at the chosen block).

    Returns:
        ``(code, how)`` where ``how`` is ``fenced``, ``unfenced`` or the reason for ``None``:
        ``no code`` / ``no def <name>``.
    """
    names = [must_define] if isinstance(must_define, str) else list(must_define or [])
    if fallback is None:
        fallback = not names
    blocks = [b for b in fenced_blocks(text) if b.code.strip()]
    if names:
        defs = [defined_names(b.code) for b in blocks]
        for want in ([names[0]], names):
            for i, d in enumerate(defs):
                if d & set(want):
                    return _with_context(blocks, i), "fenced"
        code = None
        for n in names:
            code = _unfenced_code(text or "", n)
            if code:
                return code, "unfenced"
    if fallback:
        if blocks:
            i = next((k for k, b in enumerate(blocks) if defined_names(b.code)), 0)
            return _with_context(blocks, i), "fenced"
        code = _unfenced_code(text or "", None)
        if code:
            return code, "unfenced"
    return None, (f"no def {names[0]}" if names else "no code")


__all__ = ["Block", "fenced_blocks", "code_blocks", "defined_names", "called_functions", "top_level_names",
           "definitions_only",
           "StopAfterDefinition", "extract_code"]
