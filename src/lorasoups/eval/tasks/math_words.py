"""Math in words (the math skill alone): the same problems answered in natural language.

The prompt is the bare question in the training format (as the GSM8K math skill data is rendered).
Two extractions (per-item scores):
  ``acc_strict``    the number after ``####`` / ``The answer is`` / ``\\boxed{}`` equals the gold
                    answer within 1e-3;
  ``acc_flexible``  the last number in the completion does;
  ``no_number``     the completion has no number at all.
Numbers are read as models write them (:mod:`lorasoups.eval.extract`): ``$9,500``,
``\\$9{,}500``, ``9\\,500``, ``\\boxed{9500 \\text{ dollars}}``, ``\\frac{3}{4}``, ``3/4``, signs.
Optional few-shot demos are the first GSM8K *train* solutions (catalogue ``gsm8k``).

Gold-answer likelihood: GSM8K's worked solution (ending ``#### n``) for ``gsm8k_words``; a
templated ``The answer is n.`` for the others (their ``output`` fields are model-written chains
of thought, not gold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..extract import last_number, numbers_close, parse_number, strict_number
from ..registry import Demo, Item, MetricInfo, Task, format_number, load_records, register_task, require

ABS_TOL = 1e-3


class MathWordsTask(Task):
    kind = "math_words"
    default_shots = 0
    max_shots = 8
    max_new_tokens = 320
    score_metrics = ("acc_strict", "acc_flexible", "no_number")
    metric_info = {"no_number": MetricInfo("failure")}

    def __init__(self, name: str, dataset: str, description: str, version: str = "2"):
        self.name, self.dataset, self.description, self.version = name, dataset, description, version

    def load_demos(self, data_dir: str | Path | None = None, shots: int | None = None) -> list[Demo]:
        k = self._check_shots(shots)
        if k == 0:
            return []
        recs = load_records("gsm8k", data_dir, self.name)
        return [Demo(r["question"], None, r["answer"]) for r in recs[:k]]

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        recs = load_records(self.dataset, data_dir, self.name)
        items = []
        for i, r in enumerate(recs):
            if limit is not None and len(items) >= limit:
                break
            if self.dataset == "gsm_hard":
                require(r, ["input", "target"], self.dataset, i)
                q, gold = r["input"], float(r["target"])
                gold_text = f"The answer is {format_number(gold)}."
            elif self.dataset == "gsm8k_test":
                require(r, ["question", "answer"], self.dataset, i)
                q, gold, gold_text = r["question"], parse_number(r["answer"].split("####")[-1]), r["answer"]
            else:
                require(r, ["instruction", "answer"], self.dataset, i)
                q, gold = r["instruction"], parse_number(r["answer"])
                gold_text = None if gold is None else f"The answer is {format_number(gold)}."
            if gold is None:
                from ...errors import DataError

                raise DataError(f"dataset {self.dataset!r} record {i}: gold answer is not a number")
            items.append(Item(f"{self.name}-{i}", q.strip(), None, gold, gold_text))
        return items

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        strict, flex = strict_number(completion), last_number(completion)
        gold = float(item.gold)
        s = {"acc_strict": float(numbers_close(strict, gold, ABS_TOL)),
             "acc_flexible": float(numbers_close(flex, gold, ABS_TOL)),
             "no_number": float(flex is None)}
        status = "no_number" if flex is None else ("strict" if strict is not None else "flexible_only")
        return {"extracted": {"strict": strict, "flexible": flex}, "answer": strict if strict is not None else flex,
                "gold": gold, "status": status, "scores": s}


for _base, _ds, _n in [("gsm_hard", "gsm_hard", "1,319"), ("gsm8k", "gsm8k_test", "1,319"), ("addsub", "addsub", "395"),
                       ("multiarith", "multiarith", "600"), ("singleeq", "singleeq", "508"), ("svamp", "svamp", "1,000")]:
    register_task(MathWordsTask(f"{_base}_words", _ds,
                                f"{_base} ({_n}) answered in words: last-number accuracy, strict and flexible"))
