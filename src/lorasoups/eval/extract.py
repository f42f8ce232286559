"""Answer extraction from model completions: numbers (strict and flexible), code blocks, counts.

All functions are pure and deterministic; they return ``None`` when nothing can be extracted.
"""

from __future__ import annotations

import math
import re
from typing import Any

# A number: optional sign (ASCII or Unicode minus), optional currency sign, digits with
# thousands separators or plain digits, optional decimals; or a bare decimal like ".5".
_NUM = r"[-−]?\s?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
NUMBER_RE = re.compile(r"(?<![\w.])" + _NUM + r"(?![\d])")
_STRICT_PATTERNS = [
    re.compile(r"####\s*(" + _NUM + r")"),
    re.compile(r"answer\s+is\s*:?\s*\**\s*(" + _NUM + r")", re.I),
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
]


def parse_number(text: Any) -> float | None:
    """Parse one number written by a person or a model.

    Accepts ``1,234``, ``-5``, ``−5``, ``3.50``, ``$1,000``, ``.5``, ``7.`` and surrounding spaces;
    returns None for anything else (including nan and infinities).
    """
    if text is None:
        return None
    if isinstance(text, bool):
        return float(text)
    if isinstance(text, (int, float)):
        v = float(text)
        return v if math.isfinite(v) else None
    s = str(text).strip().replace("−", "-")
    s = re.sub(r"^([-+]?)\s*[$€£]\s*", r"\1", s)
    s = s.rstrip(".").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s):
        return None
    v = float(s)
    return v if math.isfinite(v) else None


def _clean(tok: str) -> float | None:
    return parse_number(tok.replace(" ", ""))


def all_numbers(text: str) -> list[float]:
    """Every number in ``text`` in order (commas as thousands separators are understood)."""
    out = []
    for m in NUMBER_RE.finditer(text or ""):
        v = _clean(m.group(0))
        if v is not None:
            out.append(v)
    return out


def last_number(text: str) -> float | None:
    """Flexible extraction: the last number anywhere in the text."""
    nums = all_numbers(text)
    return nums[-1] if nums else None


def strict_number(text: str) -> float | None:
    """Strict extraction: the number after the last ``#### ``, ``The answer is`` or ``\\boxed{}``
    marker (the formats of GSM8K solutions and chain-of-thought answers); None without a marker."""
    best: tuple[int, float] | None = None
    for pat in _STRICT_PATTERNS:
        for m in pat.finditer(text or ""):
            v = _clean(m.group(1))
            if v is not None and (best is None or m.start() >= best[0]):
                best = (m.start(), v)
    return best[1] if best else None


def numbers_close(pred: float | None, gold: float | None, abs_tol: float = 1e-3, rel_tol: float = 0.0) -> bool:
    """``|pred - gold| <= max(abs_tol, rel_tol * |gold|)``; False when either is None."""
    if pred is None or gold is None:
        return False
    return abs(pred - gold) <= max(abs_tol, rel_tol * abs(gold))


# ---- code ---------------------------------------------------------------------------------
_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_CODE_START_RE = re.compile(r"^(def |class |import |from \S+ import |@)", re.M)
_CODEISH_RE = re.compile(r"^(def |class |import |from |@|#|if __name__|[A-Za-z_][\w.]*\s*(=|\(|\[|\+=|-=))")


def code_blocks(text: str) -> list[str]:
    """Contents of the Markdown code fences in ``text``, in order; an unclosed last fence (a
    completion cut off by the token limit) counts up to the end of the text."""
    return [m.group(2) for m in _FENCE_RE.finditer(text or "") if m.group(2).strip()]


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
    import textwrap

    return _trim_to_compilable(textwrap.dedent(code))


def extract_code(text: str, must_define: str | None = None) -> tuple[str | None, str]:
    """Extract a program from a completion.

    Rules: among fenced blocks, the first that defines ``must_define`` (a function name), else
    (without ``must_define``) the first block; without fences, the code starting at
    ``def must_define(`` (or at the first ``def``/``import`` line) up to the first prose line,
    trimmed until it compiles.

    Returns:
        ``(code, how)`` where ``how`` is ``fenced``, ``unfenced`` or the reason for ``None``:
        ``no code`` / ``no def <name>``.
    """
    blocks = code_blocks(text)
    if must_define:
        pat = re.compile(rf"^[ \t]*def\s+{re.escape(must_define)}\s*\(", re.M)
        for b in blocks:
            if pat.search(b):
                return b.strip("\n") + "\n", "fenced"
    elif blocks:
        return blocks[0].strip("\n") + "\n", "fenced"
    code = _unfenced_code(text or "", must_define)
    if code:
        return code, "unfenced"
    return None, (f"no def {must_define}" if must_define else "no code")


# ---- counts (prompt formats) -------------------------------------------------------------
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_COUNT_RE = re.compile(r"\b(\d+|" + "|".join(_WORDS) + r")\b", re.I)


def extract_count(text: str) -> int | None:
    """The count a completion gives: the number after ``answer is``/``answer:``/``answer`` when
    present, else the first integer or number word (``zero`` .. ``twenty``) in the text."""
    t = text or ""
    m = re.search(r"answer\s*(?:is|:)?\s*:?\s*(\d+|" + "|".join(_WORDS) + r")\b", t, re.I)
    if m is None:
        m = _COUNT_RE.search(t)
    if m is None:
        return None
    g = m.group(1).lower()
    return int(g) if g.isdigit() else _WORDS[g]
