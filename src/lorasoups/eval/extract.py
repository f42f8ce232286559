"""Answer extraction from model completions: numbers (strict and flexible), code blocks, counts.

All functions are pure and deterministic; they return ``None`` when nothing can be extracted.
Numbers are read as models write them, in prose and in LaTeX (``$9,500``, ``\\$9{,}500``,
``9\\,500``, ``\\boxed{..}``, ``\\text{..}``, ``\\frac{3}{4}``, signs, decimals, fractions): every
extractor first rewrites LaTeX number forms to plain text (:func:`normalize_number_text`).
Code extraction and the code stop rule live in :mod:`lorasoups.eval.codeblocks` (re-exported here).
"""

from __future__ import annotations

import math
import re
from typing import Any

# ---- numbers as people and models write them ---------------------------------------------
# LaTeX that only changes how a number looks: \text{..}-like wrappers, {,} and {.} (LaTeX's
# comma/point without a math-mode space), \frac, thin spaces between digit groups, escaped $ and %,
# math delimiters. normalize_number_text rewrites them to plain text before any pattern runs.
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|"
                          r"mbox|hbox|operatorname|num|emph)\s*\{([^{}]*)\}")
_NUMERIC = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_MIXED_RE = re.compile(r"(?<![\d.])(\d+)[ \t]*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
# a separator between digit groups: 9\,500  9\ 500  9~500  9 500 (no-break / thin spaces)
_GROUP_SPACE_RE = re.compile(r"(?<=\d)(?:\\[,!; ]|~|[\u00a0\u2009\u202f\u2007])(?=\d{3}(?!\d))")
# scientific notation: 1.5 \times 10^{3}, 1.5 \cdot 10^3, 1.5×10^-3
_TIMES_TEN_RE = re.compile(r"(?<![\d.,])(\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|·)\s*"
                           r"10\s*\^\s*\{?\s*([-−+]?)\s*(\d+)\s*\}?")
_LATEX_SPACE_RE = re.compile(r"\\(?:[,;:! ]|quad\b|qquad\b)")
_LATEX_DROP_RE = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\$\$|\\[()\[\]]")


def _frac_text(a: str, b: str) -> str:
    if re.fullmatch(_NUMERIC, a) and re.fullmatch(r"\d+(?:\.\d+)?", b):
        return f"{a}/{b}"
    return f"({a})/({b})"


def _mixed_text(m: re.Match) -> str:
    whole, num, den = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return m.group(0) if den == 0 else repr(whole + num / den)


def normalize_number_text(text: str) -> str:
    """Rewrite LaTeX and typographic number forms to plain text, leaving everything else alone.

    ``\\$`` -> ``$``, ``\\%`` -> ``%``; ``\\text{..}``, ``\\textbf{..}``, ``\\mathrm{..}``,
    ``\\mbox{..}``, ``\\num{..}`` (and similar) -> their content; ``{,}`` -> ``,`` and ``{.}`` ->
    ``.``; ``\\frac{a}{b}`` / ``\\dfrac`` / ``\\tfrac`` / ``\\frac12`` -> ``a/b``; a mixed number
    ``1\\frac{1}{2}`` -> ``1.5``; ``1.5 \\times 10^{3}`` / ``1.5×10^3`` -> ``1.5e3``;
    ``\\,``, ``\\ ``, ``~`` or a no-break/thin space between a digit and a group of exactly three
    digits (``9\\,500``) -> nothing; other LaTeX spacing -> a space;
    ``\\left``/``\\right``, ``$$`` and the delimiters ``\\( \\) \\[ \\]`` -> removed.
    ``\\boxed{..}`` is kept (strict extraction looks for it).
    """
    t = str(text or "")
    if "\\" not in t and "{" not in t and not re.search(r"[\u00a0\u2009\u202f\u2007×·]|\$\$|\d~\d", t):
        return t
    t = t.replace("\\$", "$").replace("\\%", "%")
    for _ in range(4):  # nested wrappers, innermost first
        t2 = _TEXT_CMD_RE.sub(r"\1", t)
        if t2 == t:
            break
        t = t2
    t = t.replace("{,}", ",").replace("{.}", ".")
    t = _MIXED_RE.sub(_mixed_text, t)
    for _ in range(4):
        t2 = _FRAC_RE.sub(lambda m: _frac_text(m.group(1), m.group(2)), t)
        if t2 == t:
            break
        t = t2
    t = _FRAC_SHORT_RE.sub(r"\1/\2", t)
    t = _GROUP_SPACE_RE.sub("", t)
    t = _TIMES_TEN_RE.sub(lambda m: m.group(1) + "e" + ("-" if m.group(2) in ("-", "−") else "") + m.group(3), t)
    t = _LATEX_SPACE_RE.sub(" ", t)
    t = _LATEX_DROP_RE.sub(" ", t)
    return t


def boxed_contents(text: str) -> list[tuple[int, str]]:
    """``(offset, content)`` of every ``\\boxed{..}`` / ``\\fbox{..}`` in ``text`` (nested braces
    matched; an unclosed box runs to the end of the text)."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text or ""):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m.start(), text[m.end():i - 1 if depth == 0 else i]))
    return out


# A number: a sign (ASCII, Unicode minus or plus) and/or a currency sign on either side of each
# other, then digits with comma thousands separators, plain digits, optional decimals, a bare
# decimal (".5"), either with an exponent ("2.0107e-06", as Python prints GSM-Hard's small
# answers), or a fraction ("3/4"; not part of a date like 12/25/2023).
_SIGN = "[-−+]"
_CUR = "[$€£]"
_PLAIN = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?)"
_FRAC = r"(?<![/\d])\d+/\d+(?![/\d])"
_NUM = rf"(?:{_SIGN}{_CUR}?[ \t]?|{_CUR}[ \t]?{_SIGN}?)?(?:{_FRAC}|{_PLAIN})"
NUMBER_RE = re.compile(rf"(?<![\w.]){_NUM}(?!\d)")
_STRICT_PATTERNS = [
    re.compile(rf"####\s*\**\s*({_NUM})(?!\d)"),
    re.compile(rf"answer\s+is\s*:?\s*\**\s*({_NUM})(?!\d)", re.I),
]
_BODY_RE = re.compile(r"([-+]?)\s*(?:[$€£]\s*)?([-+]?)\s*(\S+)")


def _parse_plain(s: str) -> float | None:
    """A normalised string that is one number (no LaTeX, no words)."""
    s = s.strip().replace("−", "-")
    s = re.sub(r"\s*%?\s*\.?$", "", s) if not re.fullmatch(r"[-+]?\.\d+", s) else s
    m = _BODY_RE.fullmatch(s)
    if not m or (m.group(1) and m.group(2)):
        return None
    sign = -1.0 if "-" in (m.group(1) + m.group(2)) else 1.0
    body = m.group(3)
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", body):
        body = body.replace(",", "")
    f = re.fullmatch(r"(\d+)/(\d+)", body)
    if f:
        if int(f.group(2)) == 0:
            return None
        v = int(f.group(1)) / int(f.group(2))
    elif re.fullmatch(r"(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", body):
        v = float(body)
    else:
        return None
    v *= sign
    return v if math.isfinite(v) else None


def parse_number(text: Any) -> float | None:
    """Parse one number written by a person or a model.

    Accepts ``1,234``, ``-5``, ``−5``, ``+5``, ``3.50``, ``$1,000``, ``-$3``, ``$-3``, ``.5``,
    ``7.``, ``50%``, ``1e9``, ``3/4``, surrounding spaces, and the LaTeX forms of
    :func:`normalize_number_text` (``\\$9{,}500``, ``9\\,500``, ``\\frac{3}{4}``,
    ``\\text{..}``) including one enclosing ``\\boxed{..}``. Returns None for anything else
    (text with words or several numbers, nan, infinities, a zero denominator).
    """
    if text is None:
        return None
    if isinstance(text, bool):
        return float(text)
    if isinstance(text, (int, float)):
        v = float(text)
        return v if math.isfinite(v) else None
    s = normalize_number_text(str(text)).strip()
    boxes = boxed_contents(s)
    if len(boxes) == 1 and boxes[0][0] == 0 and s.rstrip(" .").endswith("}"):
        s = boxes[0][1]
    return _parse_plain(s)


def _clean(tok: str) -> float | None:
    return _parse_plain(tok.replace(" ", "").replace("\t", ""))


def _numbers(normalized: str) -> list[float]:
    out = []
    for m in NUMBER_RE.finditer(normalized):
        v = _clean(m.group(0))
        if v is not None:
            out.append(v)
    return out


def all_numbers(text: str) -> list[float]:
    """Every number in ``text`` in order, after :func:`normalize_number_text` (``9{,}500``,
    ``9\\,500`` and ``9,500`` are one number, 9500; ``3/4`` and ``\\frac{3}{4}`` are 0.75).

    A comma splits numbers unless it is a thousands separator (groups of exactly three digits):
    ``1,2,3`` and ``1, 2, 3`` are the list 1, 2, 3, but ``100,200,300`` is 100200300 (written
    as a thousands-separated number). An ASCII space never joins digits (``3 500`` is 3 and 500).
    """
    return _numbers(normalize_number_text(text or ""))


def last_number(text: str) -> float | None:
    """Flexible extraction: the last number anywhere in the text (see :func:`all_numbers`)."""
    nums = all_numbers(text)
    return nums[-1] if nums else None


def _box_value(content: str) -> float | None:
    v = _parse_plain(content)
    if v is None:
        nums = _numbers(content)
        v = nums[-1] if nums else None
    return v


def strict_number(text: str) -> float | None:
    """Strict extraction: the number after the last ``#### ``, ``The answer is`` or ``\\boxed{}``
    marker (the formats of GSM8K solutions and chain-of-thought answers); None without a marker.

    The text is normalised first (:func:`normalize_number_text`), so ``The answer is $9{,}500.``
    and ``\\boxed{\\$9{,}500}`` give 9500. The marker may be followed by ``:``, bold ``**`` and
    LaTeX delimiters; a box gives its content's number (the last one when the box holds more,
    e.g. ``\\boxed{x = 5}`` or ``\\boxed{5 \\text{ apples}}``).
    """
    t = normalize_number_text(text or "")
    best: tuple[int, float] | None = None
    cands: list[tuple[int, float | None]] = []
    for pat in _STRICT_PATTERNS:
        cands += [(m.start(), _clean(m.group(1))) for m in pat.finditer(t)]
    cands += [(start, _box_value(content)) for start, content in boxed_contents(t)]
    for start, v in cands:
        if v is not None and (best is None or start >= best[0]):
            best = (start, v)
    return best[1] if best else None


def numbers_close(pred: float | None, gold: float | None, abs_tol: float = 1e-3, rel_tol: float = 0.0) -> bool:
    """``|pred - gold| <= max(abs_tol, rel_tol * |gold|)``; False when either is None."""
    if pred is None or gold is None:
        return False
    return abs(pred - gold) <= max(abs_tol, rel_tol * abs(gold))


# ---- code (see codeblocks.py) -----------------------------------------------------------
from .codeblocks import StopAfterDefinition, code_blocks, extract_code  # noqa: E402,F401


# ---- counts (prompt formats) -------------------------------------------------------------
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_WORDS["none"] = 0
_COUNT_RE = re.compile(r"(?<![\w.])(\d+)(?![\d])|\b(" + "|".join(_WORDS) + r")\b", re.I)
# a quotation: the echoed sentence ('a dog in the fog') or quoted words/letters ('o', "two");
# an apostrophe inside a word (don't, dogs') does not open one
_QUOTED_RE = re.compile(r"(?<![A-Za-z0-9])(?:'[^'\n]*'|‘[^’\n]*’|\"[^\"\n]*\"|“[^”\n]*”)(?![A-Za-z0-9])")


def extract_count(text: str) -> int | None:
    """The count a prompt-formats reply gives: the **last** number in it (the LoRA Soups release's
    rule for its prompt-format test sets: the last run of digits of the reply).

    So ``the correct answer is 3`` gives 3 and ``The sentence has 11 words and 3 of them contain
    the letter 'o'`` gives 3 (not 11). Beyond the release, which reads digits only: number words
    ``zero`` .. ``twenty`` and ``none`` (= 0) count as numbers too, and quoted text (the echoed
    sentence, quoted words or letters) is skipped unless the reply has no number outside quotes.
    Returns None when the reply has no number at all.
    """
    t = text or ""
    for src in (_QUOTED_RE.sub(" ", t), t):
        ms = list(_COUNT_RE.finditer(src))
        if ms:
            m = ms[-1]
            return int(m.group(1)) if m.group(1) else _WORDS[m.group(2).lower()]
    return None
