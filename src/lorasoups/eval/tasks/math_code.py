"""Math with code (PAL, Gao et al. 2023): the model writes ``def solution()`` that returns the
answer; the program runs in the sandbox and is correct when ``|result - gold| <= 1e-3``.

This is the skill-composition target of LoRA Soups (Prabhakar et al. 2024, Sec. 4: GSM-Hard needs
the math skill *and* the code skill). Few-shot demos are the release's
``few_shot_demo/math.json`` (catalogue ``math_demos``, 8 PAL demos), as earlier chat turns.

Per-item scores (means are the metrics):
  ``exec_acc``          return value within 1e-3 of the gold answer (the headline metric);
  ``exec_acc_rel``      within ``max(1e-3, 1e-4 * |gold|)`` (GSM-Hard's numbers reach 1e9);
  ``exec_acc_printed``  like ``exec_acc`` but a ``solution()`` returning None falls back to the
                        last number it printed;
  ``extract_failed``    no ``def solution()`` found in the completion;
  ``raised``            the program raised (syntax error, exception, memory) — status error/oom;
  ``timed_out``         wall-clock or CPU-time limit;
  ``no_return``         ran, but returned no number (e.g. printed instead of returning).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..codeblocks import StopAfterDefinition
from ..extract import extract_code, last_number, numbers_close, parse_number
from ..registry import Demo, Item, MetricInfo, Task, format_number, load_records, register_task, require
from ..sandbox import Program

DIRECTIVE = "Write a Python function `solution()` that returns the answer."
PAL_LEAD = "Let’s go ahead and solve this using Python:"
ABS_TOL = 1e-3
REL_TOL = 1e-4


def strip_docstring(code: str) -> str:
    """Remove the first triple-quoted docstring (GSM-Hard's gold programs carry the original GSM8K
    question there, with the original numbers) and trailing blank lines."""
    code = re.sub(r'\n[ \t]*(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\')[ \t]*(?=\n)', "", code, count=1)
    lines = [ln.rstrip() for ln in code.strip("\n").splitlines()]
    return "\n".join(lines).strip("\n")


def pal_response(code: str) -> str:
    """A gold program in the demos' response format (lead sentence + fenced code)."""
    return f"{PAL_LEAD}\n```\n{strip_docstring(code)}\n```"


class MathCodeTask(Task):
    kind = "math_code"
    executes_code = True
    default_shots = 4
    max_shots = 8
    max_new_tokens = 320
    stop_note = "after the first closed code block that defines solution()"
    timeout_s = 5.0
    score_metrics = ("exec_acc", "exec_acc_rel", "exec_acc_printed", "extract_failed", "raised", "timed_out",
                     "no_return")
    metric_info = {m: MetricInfo("failure") for m in ("extract_failed", "raised", "timed_out", "no_return")}

    def __init__(self, name: str, dataset: str, description: str, version: str = "2"):
        self.name, self.dataset, self.description, self.version = name, dataset, description, version
        if dataset != "gsm_hard":
            self.likelihood_note = (f"no gold program for {name}; gold-answer likelihood is reported by "
                                    f"{name}_words (the answer in words)")

    def load_demos(self, data_dir: str | Path | None = None, shots: int | None = None) -> list[Demo]:
        k = self._check_shots(shots)
        recs = load_records("math_demos", data_dir, self.name)
        return [Demo(f"{r['instruction'].strip()}\n\n{DIRECTIVE}", None, r["output"].strip()) for r in recs[:k]]

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        recs = load_records(self.dataset, data_dir, self.name)
        items = []
        for i, r in enumerate(recs):
            if limit is not None and len(items) >= limit:
                break
            if self.dataset == "gsm_hard":
                require(r, ["input", "target", "code"], self.dataset, i)
                q, gold, gold_text = r["input"], float(r["target"]), pal_response(r["code"])
            elif self.dataset == "gsm8k_test":
                require(r, ["question", "answer"], self.dataset, i)
                q, gold, gold_text = r["question"], parse_number(r["answer"].split("####")[-1]), None
            else:
                require(r, ["instruction", "answer"], self.dataset, i)
                q, gold, gold_text = r["instruction"], parse_number(r["answer"]), None
            if gold is None:
                from ...errors import DataError

                raise DataError(f"dataset {self.dataset!r} record {i}: gold answer is not a number")
            items.append(Item(f"{self.name}-{i}", f"{q.strip()}\n\n{DIRECTIVE}", None, gold, gold_text))
        return items

    def stop_rule(self, item: Item) -> StopAfterDefinition:
        """Generation ends once a closed code block defines ``solution()`` (an import-only block or
        an example before it does not end the completion)."""
        return StopAfterDefinition("solution")

    def program(self, item: Item, completion: str) -> tuple[Program | None, str | None, str]:
        # the block that defines solution(), with imports/helpers from the completion's other blocks
        code, how = extract_code(completion, must_define="solution")
        if code is None:
            return None, None, how
        return Program(code, call="solution()", timeout_s=self.timeout_s), code, how

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        gold = float(item.gold)
        s = {"exec_acc": 0.0, "exec_acc_rel": 0.0, "exec_acc_printed": 0.0, "extract_failed": 0.0,
             "raised": 0.0, "timed_out": 0.0, "no_return": 0.0}
        rec: dict[str, Any] = {"extracted": extracted, "answer": None, "gold": gold}
        if extracted is None:
            s["extract_failed"] = 1.0
            rec.update(status="extract_failed", scores=s)
            return rec
        st = exec_result.status
        rec["status"] = st
        rec["error"] = exec_result.error
        rec["stdout"] = (exec_result.stdout or "")[:2000]
        if st == "timeout":
            s["timed_out"] = 1.0
        elif st in ("error", "oom"):
            s["raised"] = 1.0
        else:
            val = exec_result.value or {}
            ans = val.get("number")
            if ans is None and val.get("str") is not None:
                ans = parse_number(val["str"])
            rec["answer"] = ans
            if ans is None:
                s["no_return"] = 1.0
                rec["status"] = "no_return"
                printed = last_number(exec_result.stdout or "")
                rec["printed_answer"] = printed
                s["exec_acc_printed"] = float(numbers_close(printed, gold, ABS_TOL))
            else:
                s["exec_acc"] = float(numbers_close(ans, gold, ABS_TOL))
                s["exec_acc_rel"] = float(numbers_close(ans, gold, ABS_TOL, REL_TOL))
                s["exec_acc_printed"] = s["exec_acc"]
        rec["scores"] = s
        return rec


for _name, _ds, _desc in [
    ("gsm_hard", "gsm_hard", "GSM-Hard (1,319): PAL programs run in the sandbox; exec accuracy; gold-program likelihood"),
    ("gsm8k", "gsm8k_test", "GSM8K test (1,319): PAL programs run in the sandbox; exec accuracy"),
    ("addsub", "addsub", "AddSub (395): PAL programs run in the sandbox; exec accuracy"),
    ("multiarith", "multiarith", "MultiArith (600): PAL programs run in the sandbox; exec accuracy"),
    ("singleeq", "singleeq", "SingleEq (508): PAL programs run in the sandbox; exec accuracy"),
    ("svamp", "svamp", "SVAMP (1,000): PAL programs run in the sandbox; exec accuracy"),
]:
    register_task(MathCodeTask(_name, _ds, _desc))

__all__ = ["MathCodeTask", "strip_docstring", "pal_response", "format_number"]
