"""Stop rules that do not cut the answer, and extraction of the block that defines what the task
calls (issue 13, item 2)."""

import re

import pytest

from lorasoups.eval.codeblocks import (StopAfterDefinition, called_functions, definitions_only, extract_code,
                                       fenced_blocks)
from lorasoups.eval.generate import CannedGenerator, HFGenerator, truncate_at_stop
from lorasoups.eval.registry import get_task
from lorasoups.eval.runner import evaluate
from lorasoups.eval.samples import read_samples

OLD_STOP = r"```[^\n]*\n[\s\S]*?\n[ \t]*```"  # the former rule: the first closed fence

# the issue's case: an import-only first block, then the solution (108 characters)
ISSUE = ("Let us use Python:\n```python\nimport math\n```\n```python\ndef solution():\n"
         "    return math.floor(1234)\n```\nDone.")
TAIL = "\nSome text after it.\n```python\nprint('never reached')\n```"
SOLUTIONS = {
    "import_only_first": "```python\nimport math\n```\nNow the function:\n```python\ndef solution():\n"
                         "    return math.floor(1234.5)\n```",
    "example_first": "For example:\n```python\nprint(solution())\n```\nwhere\n```\ndef solution():\n    return 1234\n```",
    "helper_first": "```python\ndef helper(a, b):\n    return a * b\n```\n```python\ndef solution():\n"
                    "    return helper(617, 2)\n```",
    "constant_first": "```python\nTOTAL = 1234\nprint(TOTAL)\n```\n```python\ndef solution():\n    return TOTAL\n```",
    "single_block": "```python\ndef solution():\n    return 1234\n```",
}


def first_stop_token_by_token(text: str, rule, step: int = 1) -> str | None:
    """What a generator that checks the rule after every ``step`` characters would return."""
    for n in range(step, len(text) + step, step):
        cut, stopped = truncate_at_stop(text[:n], (), rule)
        if stopped:
            return cut
    return None


def test_issue_completion_is_not_cut_and_runs_as_one_program():
    rule = get_task("gsm_hard").stop_rule(None)
    assert len(ISSUE) == 108
    assert len(truncate_at_stop(ISSUE, (), OLD_STOP)[0]) == 44  # the old rule kept 44 characters
    cut, stopped = truncate_at_stop(ISSUE, (), rule)
    assert stopped and cut == ISSUE[: ISSUE.index("Done.") - 1]
    code, how = extract_code(cut, "solution")
    assert how == "fenced" and code == "import math\n\ndef solution():\n    return math.floor(1234)\n"
    ns: dict = {}
    exec(code, ns)
    assert ns["solution"]() == 1234


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
@pytest.mark.parametrize("step", [1, 3, 7])
def test_stop_rule_token_by_token_equals_whole_text(name, step):
    text = SOLUTIONS[name] + TAIL
    rule = StopAfterDefinition("solution")
    whole, stopped = truncate_at_stop(text, (), rule)
    assert stopped and whole == SOLUTIONS[name]  # ends right after the block that defines solution()
    assert first_stop_token_by_token(text, rule, step) == whole


@pytest.mark.parametrize("text", [
    "```python\nimport math\n```\n",                          # import only: keep going
    "```python\nprint(solution())\n```\n",                    # an example call
    "```python\ndef helper():\n    return 1\n```\n",          # a helper
    "```python\ndef solution():\n    return 1\n",             # the block is not closed yet
    "def solution():\n    return 1\n",                        # no fence at all (ends by EOS/budget)
    "```python\ndef solutions():\n    return 1\n```",         # another name
])
def test_stop_rule_waits_while_the_answer_cannot_be_complete(text):
    assert StopAfterDefinition("solution")(text) is None
    assert truncate_at_stop(text, (), StopAfterDefinition("solution")) == (text, False)


def test_stop_rule_needs_every_called_name():
    rule = StopAfterDefinition(["max_chain_length", "Pair"])
    one = "```python\nclass Pair:\n    pass\n```\n"
    two = one + "```python\ndef max_chain_length(a, n):\n    return n\n```"
    assert rule(one) is None and rule(two) == len(two)
    assert rule(two + "\nmore") == len(two)
    with pytest.raises(ValueError):
        StopAfterDefinition([])


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_extraction_picks_the_defining_block_and_keeps_other_blocks_definitions(name):
    code, how = extract_code(SOLUTIONS[name] + TAIL, "solution")
    assert how == "fenced" and "print(" not in code  # example calls of other blocks are dropped
    ns: dict = {}
    exec(code, ns)
    assert ns["solution"]() == 1234


def test_extraction_fallbacks():
    # required name missing: None (math programs); MBPP-style fallback: first block that defines something
    two = "```python\nx = compute()\n```\n```python\ndef add(a, b):\n    return a + b\n```"
    assert extract_code(two, "solution") == (None, "no def solution")
    code, how = extract_code(two, ["plus"], fallback=True)
    assert how == "fenced" and code == "def add(a, b):\n    return a + b\n"
    assert extract_code("```python\nprint(1)\n```", fallback=True)[0] == "print(1)\n"
    # the first defining block wins; other blocks' definitions of the same name do not override it
    v2 = "```python\ndef solution():\n    return 1\n```\nor\n```python\ndef solution():\n    return 2\n```"
    ns: dict = {}
    exec(extract_code(v2, "solution")[0], ns)
    assert ns["solution"]() == 1
    # an unparsable other block contributes its import lines only
    assert definitions_only("import os\nthis is prose (\nfrom math import pi") == "import os\nfrom math import pi"
    assert definitions_only("@dec\ndef f():\n    pass\nf()\nR = 3\ny = f()\nassert R") == "@dec\ndef f():\n    pass\nR = 3"


def test_fenced_blocks_closed_and_unclosed():
    bs = fenced_blocks("a ```py\nx = 1\n```\n```\n```\n```python\ny = 2")
    assert [(b.code, b.lang, b.closed) for b in bs] == [("x = 1", "py", True), ("", "", True), ("y = 2", "python", False)]


def test_called_functions_of_mbpp_asserts():
    assert called_functions("assert set(similar_elements((3, 4), (5, 4))) == set((4, 5))") == ["similar_elements"]
    assert called_functions("assert math.isclose(area(3), 15.5, rel_tol=0.001)") == ["area"]
    assert called_functions("assert sum(10, 15) == 6") == ["sum"]  # MBPP 126 tests its own sum
    assert called_functions("assert f(Pair(1, 2)) == 1") == ["f", "Pair"]
    assert called_functions("assert f(g(1)) == 1", exclude=["g"]) == ["f"]


CODE_COMPLETIONS = {  # multiarith fake items: Q0 gold 1234, Q1 gold -5, Q2 gold 2.5, Q3 gold 6
    "Q0": SOLUTIONS["import_only_first"] + TAIL,
    "Q1": "```\nprint(solution())\n```\nwhere\n```python\ndef solution():\n    return -5\n```" + TAIL,
    "Q2": "```python\ndef half(x):\n    return x / 2\n```\n```python\ndef solution():\n    return half(5)\n```" + TAIL,
    "Q3": "```python\ndef solution():\n    return 6\n```" + TAIL,
}


def _canned(table):
    def fn(p):
        user = p.rsplit("<|im_start|>user\n", 1)[-1]
        return next((v for k, v in table.items() if k in user), "")
    return CannedGenerator(fn, apply_stops=True)


def test_math_code_exec_acc_1_when_the_solution_is_not_the_first_block(fake_data, tiny_dir, tmp_path):
    gen = _canned(CODE_COMPLETIONS)
    res = evaluate(str(tiny_dir), None, ["multiarith"], tmp_path / "mc", generator=gen, data_dir=fake_data,
                   allow_code_execution=True, likelihood=False, limit=4, shots=1)
    recs = {r["id"]: r for r in read_samples(tmp_path / "mc" / "multiarith" / "samples.jsonl")}
    assert [recs[f"multiarith-{i}"]["scores"]["exec_acc"] for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert res["tasks"]["multiarith"]["metrics"]["exec_acc"]["value"] == 1.0
    for r in recs.values():  # the completion ends after the defining block, nothing after it
        assert r["completion"].endswith("```") and "never reached" not in r["completion"]
    assert all(isinstance(x, StopAfterDefinition) for x in gen.stop_rules[0])
    assert "defines solution()" in res["tasks"]["multiarith"]["options"]["stop_rule"]


MBPP_COMPLETIONS = {
    # an example call first, then the function
    "square a number": "```python\nprint(square(3))\n```\nThe function:\n```python\ndef square(x):\n"
                       "    return x ** 2\n```" + TAIL,
    # an import-only block first
    "double a number": "```python\nimport operator\n```\n```python\ndef double(x):\n    return operator.mul(2, x)\n```"
                       + TAIL,
    # a helper in its own block (BASE comes from the item's set-up code)
    "BASE plus": "```python\ndef helper(x):\n    return BASE + x\n```\n```python\ndef plus(x):\n"
                 "    return helper(x)\n```" + TAIL,
}


def test_mbpp_pass_at_1_when_the_tested_function_is_not_the_first_block(fake_data, tiny_dir, tmp_path):
    gen = _canned(MBPP_COMPLETIONS)
    res = evaluate(str(tiny_dir), None, ["mbpp"], tmp_path / "mb", generator=gen, data_dir=fake_data,
                   allow_code_execution=True, likelihood=False)
    assert res["tasks"]["mbpp"]["metrics"]["pass_at_1"]["value"] == 1.0
    assert [r.names for r in gen.stop_rules[0]] == [("square",), ("double",), ("plus",)]
    recs = read_samples(tmp_path / "mb" / "mbpp" / "samples.jsonl")
    assert all("never reached" not in r["completion"] for r in recs)
    # with the former first-fence rule and first-block extraction every one of them failed
    t = get_task("mbpp")
    for it in t.load_items(fake_data):
        text = next(v for k, v in MBPP_COMPLETIONS.items() if k in it.instruction)
        first = fenced_blocks(truncate_at_stop(text, (), OLD_STOP)[0])[0].code
        assert not re.search(r"^def " + t.entry_points(it)[0], first, re.M)


def test_mbpp_gold_solutions_stop_at_their_end(fake_data):
    t = get_task("mbpp")
    for it in t.load_items(fake_data):
        cut, stopped = truncate_at_stop(it.gold_text + TAIL, (), t.stop_rule(it))
        assert stopped and cut == it.gold_text


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from lorasoups.models import load_base

    return load_base(str(tiny_dir))


def test_hf_generator_applies_one_stop_rule_per_prompt(tiny):
    model, tok = tiny
    prompts = ["<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nsomething longer<|im_end|>\n<|im_start|>assistant\n"]
    g = HFGenerator(model, tok, batch_size=2, bf16=False)
    free = g.generate(prompts, 12)
    assert all(len(t) > 4 for t in free)
    calls = []

    def cut_at_4(text):
        calls.append(text)
        return 4 if len(text) >= 4 else None

    got = g.generate(prompts, 12, (), [cut_at_4, None])
    assert got == [free[0][:4], free[1]]
    assert all(free[0].startswith(c) for c in calls)  # the rule saw the row's growing text only
    assert len(calls) < 12  # and the row left the batch once cut
    with pytest.raises(ValueError):
        g.generate(prompts, 2, (), [None])


def test_later_blocks_are_not_used():
    text = ("```python\ndef solution():\n    return 1\n```\nAnother way:\n```python\nimport not_installed_module\n"
            "def helper():\n    return 2\n```")
    assert extract_code(text, "solution")[0] == "def solution():\n    return 1\n"
