"""Prompt-format robustness (LoRA Soups Sec. 4): count the words of a sentence containing a letter,
asked in four held-out prompt formats (test formats 3, 7, 8 and 10; 417 items each).

Scores: ``acc`` (extracted count equals the gold count; all formats), ``acc_format<k>`` per format,
``spread`` = best minus worst format accuracy (the robustness measure), ``no_count`` (nothing
extracted). Because the gold counts are skewed (0 is the answer to 39% of the items), a model that
always gives the same answer can look good; ``pred_majority_rate`` (share of the model's most
frequent prediction), ``gold_majority_rate`` (accuracy of always answering the most common gold
count) and ``acc_class<k>`` (accuracy on items whose gold count is k) expose that.
``--limit`` applies per format. Gold-answer likelihood: the release's ``output``
(``the correct answer is k``).

The count of a reply is its **last** number (:func:`lorasoups.eval.extract.extract_count`), the
rule of the LoRA Soups release (its evaluation reads the last run of digits of the reply): ``the
correct answer is 3`` and ``The sentence has 11 words and 3 of them contain the letter 'o'`` both
give 3. Beyond the release: number words (``zero`` .. ``twenty``, ``none``) count, and quoted text
(the echoed sentence, quoted letters or words) is skipped when the reply has a number outside it.
Before version 2 the first number was taken, which scored such replies 0.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ...errors import DataError
from ..extract import extract_count
from ..metrics import Metric, mean_stderr, spread
from ..registry import Item, MetricInfo, Task, load_records, register_task, require

FORMATS = (3, 7, 8, 10)


class PromptFormatsTask(Task):
    name = "prompt_formats"
    version = "2"
    kind = "prompt_formats"
    description = "Prompt formats 3, 7, 8, 10 (4 x 417): count accuracy per format, spread, per-class and majority rates"
    default_shots = 0
    max_shots = 0
    max_new_tokens = 16
    score_metrics = ("acc", *(f"acc_format{f}" for f in FORMATS), "spread", "no_count", "pred_majority_rate",
                     "gold_majority_rate", *(f"acc_class{k}" for k in range(7)))
    # spread (best - worst format) is small both for a robust model and for one that always gives
    # the same count: a diagnostic to read next to the accuracy, as the majority rates are
    metric_info = {"no_count": MetricInfo("failure"), "spread": MetricInfo("diagnostic"),
                   "pred_majority_rate": MetricInfo("diagnostic"), "gold_majority_rate": MetricInfo("diagnostic")}

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        items = []
        for f in FORMATS:
            ds = f"prompt_format{f}_test"
            recs = load_records(ds, data_dir, self.name)
            for i, r in enumerate(recs[: limit if limit is not None else None]):
                require(r, ["instruction", "answer"], ds, i)
                m = re.fullmatch(r"answer(\d+)", str(r["answer"]).strip())
                if not m:
                    raise DataError(f"dataset {ds!r} record {i}: answer {r['answer']!r} is not 'answer<k>'")
                gold = int(m.group(1))
                gold_text = (r.get("output") or f"the correct answer is {gold}").strip()
                items.append(Item(f"prompt_formats-f{f}-{i}", r["instruction"], r.get("input") or None, gold, gold_text,
                                  meta={"format": f}))
        return items

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        c = extract_count(completion)
        f = item.meta["format"]
        ok = float(c is not None and c == item.gold)
        s = {"acc": ok, f"acc_format{f}": ok, f"acc_class{item.gold}": ok, "no_count": float(c is None)}
        return {"extracted": c, "answer": c, "gold": item.gold, "format": f,
                "status": "no_count" if c is None else "counted", "scores": s}

    def aggregate(self, items: Sequence[Item], records: Sequence[dict[str, Any]]) -> dict[str, Metric]:
        out = super().aggregate(items, records)
        per_format = [out[f"acc_format{f}"] for f in FORMATS if f"acc_format{f}" in out]
        out["spread"] = spread(per_format)
        preds = [r.get("answer") for r in records if r.get("answer") is not None]
        if records:
            # share of all items answered with the most frequent count; 0 when no item gave a count
            top = Counter(preds).most_common(1)[0][0] if preds else None
            out["pred_majority_rate"] = mean_stderr([float(top is not None and r.get("answer") == top) for r in records],
                                                    **{"class": top})
        golds = [it.gold for it in items]
        if golds:
            gtop, _ = Counter(golds).most_common(1)[0]
            out["gold_majority_rate"] = mean_stderr([float(g == gtop) for g in golds], **{"class": gtop})
        return dict(sorted(out.items()))


register_task(PromptFormatsTask())
