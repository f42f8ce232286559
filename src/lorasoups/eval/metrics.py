"""Metric values with standard errors, paired comparisons, and text-overlap scores.

Every reported metric is a :class:`Metric` (``value``, ``stderr``, ``n``; the same keys in JSON).
Means over items use the standard error of the mean ``s / sqrt(n)`` with the sample standard
deviation ``s`` (ddof 1); a proportion is the mean of 0/1 values, so its standard error is
``sqrt(p(1-p)/(n-1))``, close to the binomial ``sqrt(p(1-p)/n)``. Comparisons of two models on the same items are paired: the mean of the
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
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Metric:
    """One reported number: the mean ``value`` over ``n`` items and its standard error ``stderr``
    (nan for ``n = 0``, 0 for ``n = 1``). ``extra`` holds descriptive fields written next to them in
    ``results.json`` (e.g. ``{"class": 3}`` for a majority rate); it takes no part in equality."""

    value: float
    stderr: float
    n: int
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "stderr", "n", **extra}``: the form written to ``results.json``."""
        return {"value": self.value, "stderr": self.stderr, "n": self.n, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Metric":
        """The inverse of :meth:`to_dict` (``None`` values, as JSON writes nan, become nan)."""
        nan = float("nan")
        extra = {k: v for k, v in d.items() if k not in ("value", "stderr", "n")}
        return cls(nan if d.get("value") is None else float(d["value"]),
                   nan if d.get("stderr") is None else float(d["stderr"]), int(d.get("n") or 0), extra)


def mean_stderr(values: Iterable[float | None], **extra: Any) -> Metric:
    """Mean of the non-None, non-nan ``values`` with its standard error (ddof 1) and count.

    Returns ``Metric(nan, nan, 0)`` for no values and ``stderr = 0`` for one.
    """
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(xs)
    if n == 0:
        return Metric(float("nan"), float("nan"), 0, extra)
    m = sum(xs) / n
    if n == 1:
        return Metric(m, 0.0, 1, extra)
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return Metric(m, math.sqrt(var / n), n, extra)


def paired_difference(a: Mapping[Any, float | None] | Sequence[float | None],
                      b: Mapping[Any, float | None] | Sequence[float | None]) -> Metric:
    """Paired difference ``mean(a_i - b_i)`` over the items both score, with its standard error
    ``sd(d, ddof=1) / sqrt(n)``. Mappings are matched by key (item id); two sequences item by item.
    ``value > 0``: ``a`` scored higher.

    Raises:
        ValueError: two sequences of different lengths.
    """
    if not isinstance(a, Mapping) and not isinstance(b, Mapping) and len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} values; pairs must match item by item")
    da = a if isinstance(a, Mapping) else dict(enumerate(a))
    db = b if isinstance(b, Mapping) else dict(enumerate(b))
    return mean_stderr([float(da[k]) - float(db[k]) for k in da
                        if k in db and da[k] is not None and db[k] is not None])


def item_scores(records: Iterable[Mapping[str, Any]], metric: str) -> dict[Any, float]:
    """Per-item values of ``metric`` (``samples.jsonl`` records: ``id`` -> ``scores[metric]``);
    items without a finite value are left out."""
    out: dict[Any, float] = {}
    for r in records:
        v = (r.get("scores") or {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[r["id"]] = float(v)
    return out


def paired_compare(samples_a: Sequence[Mapping[str, Any]], samples_b: Sequence[Mapping[str, Any]], metric: str) -> Metric:
    """Paired comparison of two runs' per-item scores (``samples.jsonl`` records), matched
    by ``id``; see :func:`paired_difference`.

    Raises:
        ValueError: no item has the metric in both runs.
    """
    d = paired_difference(item_scores(samples_a, metric), item_scores(samples_b, metric))
    if d.n == 0:
        raise ValueError(f"paired_compare: no item has metric {metric!r} in both runs")
    return d


def compare_runs(run_a: str, run_b: str, task: str, metric: str) -> Metric:
    """Paired comparison of two ``lorasoups eval`` output folders on one task's metric."""
    from .samples import read_samples, samples_path

    return paired_compare(read_samples(samples_path(run_a, task)), read_samples(samples_path(run_b, task)), metric)


def spread(metrics: Sequence[Metric]) -> Metric:
    """``max - min`` of several metric values (e.g. accuracy across prompt formats).

    The standard error is approximated by ``sqrt(se_max^2 + se_min^2)`` (the two extreme groups
    treated as independent, ignoring the selection of the extremes); ``n`` sums the groups.
    """
    ms = [m for m in metrics if m.n > 0]
    if not ms:
        return Metric(float("nan"), float("nan"), 0)
    hi = max(ms, key=lambda m: m.value)
    lo = min(ms, key=lambda m: m.value)
    return Metric(hi.value - lo.value, math.sqrt(hi.stderr ** 2 + lo.stderr ** 2), sum(m.n for m in ms))


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


class _SquadTokens:
    """A ``rouge-score`` tokenizer giving the SQuAD-normalised tokens (:func:`normalize_answer`)."""

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


_ROUGE_SCORERS: dict[Any, Any] = {}


def _rouge_l_f(pred: str, gold: str, use_stemmer: bool = False, tokenizer: Any = None) -> float:
    key = (bool(use_stemmer), type(tokenizer))
    if key not in _ROUGE_SCORERS:
        from rouge_score import rouge_scorer

        _ROUGE_SCORERS[key] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer, tokenizer=tokenizer)
    return float(_ROUGE_SCORERS[key].score(gold or "", pred or "")["rougeL"].fmeasure)


def rouge_l(pred: str, gold: str, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure as the ``rouge-score`` package computes it:
    ``RougeScorer(["rougeL"], use_stemmer).score(gold, pred)["rougeL"].fmeasure``.

    Tokens: lower-case, every character outside ``[a-z0-9]`` separates tokens (articles and
    numbers kept; non-ASCII letters dropped); Porter stemming only with ``use_stemmer``. 0.0 when
    either side has no token. Lin (2004), Sec. 3.1 (ROUGE-L, beta = 1).
    """
    return _rouge_l_f(pred, gold, use_stemmer)


def rouge_l_squad(pred: str, gold: str) -> float:
    """ROUGE-L F-measure (beta = 1) of the SQuAD-normalised tokens (:func:`normalize_answer`:
    lower-case, punctuation and articles dropped), computed by ``rouge-score`` with that
    tokenizer; 1.0 when both are empty, 0.0 when only one is. Not the :func:`rouge_l` value."""
    if not normalize_answer(pred) and not normalize_answer(gold):
        return 1.0
    return _rouge_l_f(pred, gold, tokenizer=_SquadTokens())
