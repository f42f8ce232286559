"""Question answering: closed-book QA on a manual (QABot, ``qabot_dnd``), domain QA (``bio_qa``)
and reading comprehension with the context in the prompt (``rc_bio``) — LoRA Soups Sec. 4.

The prompt is the question (``rc_bio``: the release's instruction, which contains the context and
the question) in the training format, zero-shot. A leading ``The correct answer is`` (the release's
response style) is removed from the completion before scoring. Per-item scores (see
:mod:`lorasoups.eval.metrics`): ``f1`` (SQuAD token F1), ``exact_match`` (SQuAD), ``rouge_l``
(ROUGE-L F-measure computed by the ``rouge-score`` package) and ``rouge_l_squad`` (the same
F-measure on SQuAD-normalised tokens).
Gold-answer likelihood: the ``answer`` field.

``bio_qa_in_text`` is the part of ``bio_qa`` whose record carries its passage (``context``): the
20 questions about the text a knowledge LoRA on ``bio_passages`` is trained on. The other 25
questions have no passage in the release, so no LoRA here can know their answers; item ids keep
the index in the full set (``bio_qa_in_text-3`` is ``bio_qa-3``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..metrics import exact_match, rouge_l, rouge_l_squad, token_f1
from ..registry import Item, Task, load_records, register_task, require

_LEAD = re.compile(r"^\s*(?:the\s+)?(?:correct\s+)?answer\s*(?:is|:)\s*:?\s*", re.I)


def clean_prediction(completion: str) -> str:
    """Strip the ``The correct answer is`` lead-in, surrounding quotes and whitespace."""
    t = (completion or "").strip()
    t = _LEAD.sub("", t, count=1)
    return t.strip().strip('"').strip()


class QATask(Task):
    default_shots = 0
    max_shots = 0
    max_new_tokens = 128
    score_metrics = ("f1", "rouge_l", "rouge_l_squad", "exact_match")

    def __init__(self, name: str, dataset: str, kind: str, description: str, version: str = "2",
                 with_context_only: bool = False):
        self.name, self.dataset, self.kind, self.description, self.version = name, dataset, kind, description, version
        self.with_context_only = with_context_only

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        recs = load_records(self.dataset, data_dir, self.name)
        items = []
        for i, r in enumerate(recs):
            if limit is not None and len(items) >= limit:
                break
            require(r, ["instruction", "answer"], self.dataset, i)
            if self.with_context_only and not str(r.get("context") or "").strip():
                continue
            ans = str(r["answer"]).strip()
            items.append(Item(f"{self.name}-{i}", r["instruction"].strip(), (r.get("input") or None), ans, ans))
        return items

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        pred = clean_prediction(completion)
        s = {"f1": token_f1(pred, item.gold), "rouge_l": rouge_l(pred, item.gold),
             "rouge_l_squad": rouge_l_squad(pred, item.gold), "exact_match": exact_match(pred, item.gold)}
        return {"extracted": pred, "gold": item.gold, "status": "empty" if not pred else "answered", "scores": s}


register_task(QATask("qabot_dnd", "qabot_dnd", "qa",
                     "QABot (50): closed-book questions on the D&D rules; token F1, ROUGE-L, exact match"))
register_task(QATask("bio_qa", "bio_qa", "qa",
                     "Biology QA (45): closed-book; token F1, ROUGE-L, exact match"))
register_task(QATask("bio_qa_in_text", "bio_qa", "qa",
                     "Biology QA, the 20 of 45 questions whose passage is in bio_passages (the knowledge text); "
                     "closed-book; token F1, ROUGE-L, exact match", with_context_only=True))
register_task(QATask("rc_bio", "rc_bio", "rc",
                     "Reading comprehension with context (201): token F1, ROUGE-L, exact match"))
