"""Metric values with standard errors, paired comparisons, and text-overlap scores.

Every reported metric is ``{"value": float, "stderr": float, "n": int}``. Means over items use the
standard error of the mean ``s / sqrt(n)`` with the sample standard deviation ``s`` (ddof 1); a
proportion is the mean of 0/1 values, so its standard error is ``sqrt(p(1-p)/(n-1))``, close to the
binomial ``sqrt(p(1-p)/n)``. Comparisons of two models on the same items are paired: the mean of the
per-item differences and the standard error of that mean (items are matched by id).

Text scores follow the SQuAD v1.1 evaluation script's definitions (Rajpurkar et al., 2016):
normalisation = lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace;
token F1 = harmonic mean of token precision and recall with multiset overlap; exact match = equal
normalised strings.

ROUGE-L (Lin, 2004): the F-measure (beta = 1) of the longest common subsequence of tokens.
``rouge_l`` is computed by the ``rouge-score`` package (Google's reimplementation of the ROUGE
toolkit, the one other evaluations use): tokens are the lower-cased runs of ``[a-z0-9]`` (all other
characters, including non-ASCII letters, separate tokens), articles are kept, no stemming.
``rouge_l_squad`` is the same F-measure on SQuAD-normalised tokens (the ``token_f1``
normalisation: articles and punctuation dropped, other characters kept), for comparison with F1.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

Metric = dict  # {"value": float, "stderr": float, "n": int}


def mean_stderr(values: Iterable[float | None]) -> Metric:
    """Mean of the non-None ``values`` with its standard error and count.

    Returns ``{"value": nan, "stderr": nan, "n": 0}`` for no values and ``stderr = 0`` for one.
    """
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return {"value": float("nan"), "stderr": float("nan"), "n": 0}
    m = sum(xs) / n
    if n == 1:
        return {"value": m, "stderr": 0.0, "n": 1}
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return {"value": m, "stderr": math.sqrt(var / n), "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Metric:
    """Paired difference ``mean(a_i - b_i)`` over the same items, with its standard error.

    Raises:
        ValueError: ``a`` and ``b`` have different lengths.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} values; pairs must match item by item")
    return mean_stderr([None if (x is None or y is None) else float(x) - float(y) for x, y in zip(a, b)])


def paired_compare(samples_a: Sequence[Mapping[str, Any]], samples_b: Sequence[Mapping[str, Any]], metric: str) -> Metric:
    """Paired comparison of two runs' per-item scores (``samples/<task>.jsonl`` records).

    Items are matched by ``id``; only items present in both runs with a value for ``metric`` in
    their ``scores`` count. Returns ``{"value": mean(a - b), "stderr", "n"}``; ``value > 0`` means
    run ``a`` scored higher.

    Raises:
        ValueError: no item has the metric in both runs.
    """
    sa = {r["id"]: r.get("scores", {}).get(metric) for r in samples_a}
    sb = {r["id"]: r.get("scores", {}).get(metric) for r in samples_b}
    ids = [i for i in sa if i in sb and sa[i] is not None and sb[i] is not None]
    if not ids:
        raise ValueError(f"paired_compare: no item has metric {metric!r} in both runs")
    return paired_difference([sa[i] for i in ids], [sb[i] for i in ids])


def compare_runs(run_a: str, run_b: str, task: str, metric: str) -> Metric:
    """Paired comparison of two ``lorasoups eval`` output folders on one task's metric."""
    from pathlib import Path

    from .samples import read_samples

    return paired_compare(read_samples(Path(run_a) / "samples" / f"{task}.jsonl"),
                          read_samples(Path(run_b) / "samples" / f"{task}.jsonl"), metric)


def spread(metrics: Sequence[Metric]) -> Metric:
    """``max - min`` of several metric values (e.g. accuracy across prompt formats).

    The standard error is approximated by ``sqrt(se_max^2 + se_min^2)`` (the two extreme groups
    treated as independent, ignoring the selection of the extremes); ``n`` sums the groups.
    """
    ms = [m for m in metrics if m["n"] > 0]
    if not ms:
        return {"value": float("nan"), "stderr": float("nan"), "n": 0}
    hi = max(ms, key=lambda m: m["value"])
    lo = min(ms, key=lambda m: m["value"])
    return {"value": hi["value"] - lo["value"], "stderr": math.sqrt(hi["stderr"] ** 2 + lo["stderr"] ** 2),
            "n": sum(m["n"] for m in ms)}


# ---- text overlap (SQuAD-style) ------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower-case, remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 on normalised tokens (1.0 when both are empty, 0.0 when only one is)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


_ROUGE_SCORERS: dict[bool, Any] = {}


def rouge_l(pred: str, gold: str, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure as the ``rouge-score`` package computes it:
    ``RougeScorer(["rougeL"], use_stemmer).score(gold, pred)["rougeL"].fmeasure``.

    Tokens: lower-case, every character outside ``[a-z0-9]`` separates tokens (articles and
    numbers kept; non-ASCII letters dropped); Porter stemming only with ``use_stemmer``. 0.0 when
    either side has no token. Lin (2004), Sec. 3.1 (ROUGE-L, beta = 1).

    Raises:
        ImportError: the ``rouge-score`` dependency is not installed.
    """
    scorer = _ROUGE_SCORERS.get(bool(use_stemmer))
    if scorer is None:
        try:
            from rouge_score import rouge_scorer
        except ImportError as e:  # a declared dependency; say how to get it
            raise ImportError("rouge_l needs the rouge-score package: pip install rouge-score") from e
        scorer = _ROUGE_SCORERS[bool(use_stemmer)] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return float(scorer.score(gold or "", pred or "")["rougeL"].fmeasure)


def rouge_l_squad(pred: str, gold: str) -> float:
    """ROUGE-L F-measure (beta = 1) from the longest common subsequence of SQuAD-normalised tokens
    (:func:`normalize_answer`: lower-case, punctuation and articles dropped); 1.0 when both are
    empty, 0.0 when only one is. Not the ``rouge-score`` value (see :func:`rouge_l`)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    lcs = _lcs_len(p, g)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(g)
    return 2 * prec * rec / (prec + rec)


def best_over_golds(fn, pred: str, golds: Sequence[str]) -> float:
    """Max of ``fn(pred, gold)`` over several gold answers (SQuAD convention)."""
    return max(fn(pred, g) for g in golds) if golds else 0.0
