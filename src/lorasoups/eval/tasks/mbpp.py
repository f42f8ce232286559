"""MBPP (Austin et al. 2021), the code skill alone: pass@1 with greedy decoding.

Split as in the MBPP paper: test = task ids 11-510 (500 problems), few-shot prompt problems = task
ids 2, 3, 4. The user turn gives the problem text and its test asserts; the response is a fenced
Python block. The extracted program and the test set-up code run in the sandbox; the asserts are
harness-owned checks (:mod:`lorasoups.eval.checks`): an item passes only when every one of them ran
and held (an early exit such as ``sys.exit`` fails).

Per-item scores: ``pass_at_1``; ``extract_failed`` (no code); ``failed_assert`` (AssertionError);
``raised`` (any other exception, syntax error or memory); ``timed_out``.
Gold-answer likelihood: the reference solution in the response format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codeblocks import StopAfterDefinition, called_functions, top_level_names
from ..extract import extract_code
from ..registry import Demo, Item, MetricInfo, Task, load_records, register_task, require
from ..sandbox import Program

TEST_IDS = range(11, 511)
PROMPT_IDS = (2, 3, 4)


def _lf(s: str) -> str:
    return (s or "").replace("\r\n", "\n").replace("\r", "\n")


def mbpp_instruction(text: str, tests: list[str]) -> str:
    return f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(t.strip() for t in tests)


def mbpp_response(code: str) -> str:
    return f"```python\n{_lf(code).strip()}\n```"


class MBPPTask(Task):
    name = "mbpp"
    version = "2"
    kind = "code"
    description = "MBPP test split (500): pass@1 of the test asserts, run in the sandbox"
    executes_code = True
    default_shots = 3
    max_shots = 3
    max_new_tokens = 384
    stop_note = "after the first closed code block by which the completion defines every function the tests call"
    timeout_s = 10.0
    score_metrics = ("pass_at_1", "extract_failed", "failed_assert", "raised", "timed_out")
    metric_info = {m: MetricInfo("failure") for m in ("extract_failed", "failed_assert", "raised", "timed_out")}

    def _records(self, data_dir: str | Path | None) -> dict[int, dict[str, Any]]:
        recs = load_records("mbpp", data_dir, self.name)
        out = {}
        for i, r in enumerate(recs):
            require(r, ["task_id", "text", "code", "test_list"], "mbpp", i)
            out[int(r["task_id"])] = r
        return out

    def load_demos(self, data_dir: str | Path | None = None, shots: int | None = None) -> list[Demo]:
        k = self._check_shots(shots)
        recs = self._records(data_dir)
        return [Demo(mbpp_instruction(recs[t]["text"], recs[t]["test_list"]), None, mbpp_response(recs[t]["code"]))
                for t in PROMPT_IDS[:k] if t in recs]

    def load_items(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[Item]:
        recs = self._records(data_dir)
        items = []
        for t in TEST_IDS:
            if limit is not None and len(items) >= limit:
                break
            if t not in recs:
                continue
            r = recs[t]
            tests = [_lf(x) for x in r["test_list"]]
            items.append(Item(f"mbpp-{t}", mbpp_instruction(r["text"], tests), None,
                              gold=tests, gold_text=mbpp_response(r["code"]),
                              meta={"setup": _lf(r.get("test_setup_code", "")), "task_id": t}))
        return items

    @staticmethod
    def entry_points(item: Item) -> list[str]:
        """The functions (and classes) the item's asserts call, the tested function first; builtins
        and names the set-up code binds are left out (unless the asserts call only builtins: MBPP
        task 126 tests its own ``sum``). Empty when the asserts do not parse."""
        try:
            return called_functions("\n".join(item.gold), exclude=top_level_names(item.meta.get("setup", "") or ""))
        except SyntaxError:
            return []

    def stop_rule(self, item: Item) -> StopAfterDefinition | None:
        """Generation ends once closed code blocks define the function(s) the asserts call."""
        names = self.entry_points(item)
        return StopAfterDefinition(names) if names else None

    def program(self, item: Item, completion: str) -> tuple[Program | None, str | None, str]:
        # the block that defines the tested function (with imports/helpers from other blocks),
        # else the first block that defines anything, else the first block
        code, how = extract_code(completion, must_define=self.entry_points(item) or None, fallback=True)
        if code is None:
            return None, None, how
        full = code + "\n\n" + item.meta.get("setup", "") + "\n"
        return Program(full, call=None, timeout_s=self.timeout_s, checks=list(item.gold)), code, how

    def score(self, item: Item, completion: str, exec_result: Any = None, extracted: Any = None) -> dict[str, Any]:
        s = {"pass_at_1": 0.0, "extract_failed": 0.0, "failed_assert": 0.0, "raised": 0.0, "timed_out": 0.0}
        rec: dict[str, Any] = {"extracted": extracted, "gold": None}
        if extracted is None:
            s["extract_failed"] = 1.0
            rec.update(status="extract_failed", scores=s)
            return rec
        st = exec_result.status
        rec.update(status=st, error=exec_result.error)
        if st == "ok" and exec_result.checks_passed == len(item.gold):
            s["pass_at_1"] = 1.0
        elif st == "timeout":
            s["timed_out"] = 1.0
        elif exec_result.error_type == "AssertionError":
            s["failed_assert"] = 1.0
            rec["status"] = "failed_assert"
        else:
            s["raised"] = 1.0
        rec["scores"] = s
        return rec


register_task(MBPPTask())
