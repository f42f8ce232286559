import math

import pytest

from lorasoups.eval.extract import (code_blocks, extract_code, extract_count, last_number, numbers_close,
                                    parse_number, strict_number)
from lorasoups.eval.metrics import (Metric, exact_match, mean_stderr, normalize_answer, paired_compare, paired_difference,
                                    rouge_l_squad, spread, token_f1)
from lorasoups.eval.likelihood import derangement


@pytest.mark.parametrize("text,val", [
    ("1,234", 1234.0), ("-5", -5.0), ("−5", -5.0), ("3.50", 3.5), ("$1,000", 1000.0), (".5", 0.5), ("7.", 7.0),
    (" 42 ", 42.0), ("-$3", -3.0), ("1,234,567.25", 1234567.25), ("abc", None), ("1,23", None), ("nan", None),
    (float("inf"), None), (12, 12.0),
])
def test_parse_number(text, val):
    assert parse_number(text) == val


def test_last_and_strict_numbers():
    t = "She had 1,200 apples and gave -3.5 away. #### 1,196.5\nextra 7"
    assert last_number(t) == 7.0
    assert strict_number(t) == 1196.5
    assert strict_number("so the answer is -42.") == -42.0
    assert strict_number("The answer is $3,000. Then 5 more") == 3000.0
    assert strict_number("no marker 12") is None and last_number("no marker 12") == 12
    assert last_number("3-2 = 1") == 1.0 and last_number("x = 3-2") == 2.0
    assert last_number("no digits") is None
    assert strict_number(r"\boxed{17}") == 17.0


def test_numbers_close_abs_and_rel():
    assert numbers_close(3431580.0004, 3431580.0) and not numbers_close(3431581.0, 3431580.0)
    assert numbers_close(3431581.0, 3431580.0, rel_tol=1e-4)
    assert not numbers_close(None, 1.0)


SOL = "def solution():\n    x = 2\n    return x * 3\n"


def test_extract_code_fenced_and_unfenced():
    assert extract_code(f"Let's use Python:\n```python\n{SOL}```\nDone.", "solution") == (SOL, "fenced")
    code, how = extract_code(f"Here it is:\n{SOL}\nThis returns 6 as required.", "solution")
    assert how == "unfenced" and code.strip() == SOL.strip()
    # two blocks: the first is a test call, the second defines solution
    two = "```\nprint(solution())\n```\nand\n```python\n" + SOL + "```"
    assert extract_code(two, "solution") == (SOL, "fenced")
    # unclosed final fence (token budget hit) still counts
    assert code_blocks("```\ndef f():\n    return 1") == ["def f():\n    return 1"]
    assert extract_code("I don't know.", "solution") == (None, "no def solution")
    assert extract_code("```\nx = 1\n```", "solution")[0] is None
    # helper import kept before the function, prose after it dropped
    code, _ = extract_code("import math\ndef solution():\n    return math.sqrt(16)\nSo the answer is 4.", "solution")
    assert code.startswith("import math") and "answer" not in code
    # without a required name: first block / first def
    assert extract_code("```\ndef add(a, b):\n    return a + b\n```")[0] == "def add(a, b):\n    return a + b\n"


def test_extract_count():
    assert extract_count("the correct answer is 3") == 3
    assert extract_count("Answer: two") == 2
    assert extract_count("There are 4 words, so 4") == 4
    assert extract_count("none") == 0 and extract_count("I cannot tell.") is None


def test_text_scores_squad_style():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat sat.", "Cat sat") == 1.0
    assert token_f1("cat sat on mat", "the cat sat") == pytest.approx(2 * (2 / 4) * (2 / 2) / (2 / 4 + 2 / 2))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # LCS of [x y z w] and [x z w] is 3: P = 3/4, R = 1 (the article "a" is dropped by normalisation)
    assert rouge_l_squad("x y z w", "a x z w") == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l_squad("y x", "x y") == pytest.approx(0.5)


def test_mean_stderr_and_paired():
    m = mean_stderr([1, 0, 1, 1, None])
    assert m.n == 4 and m.value == 0.75
    assert m.stderr == pytest.approx(math.sqrt((0.75 * 0.25 * 4 / 3) / 4))
    assert mean_stderr([]).n == 0 and mean_stderr([2.0]).to_dict() == {"value": 2.0, "stderr": 0.0, "n": 1}
    assert mean_stderr([1.0], **{"class": 3}).to_dict() == {"value": 1.0, "stderr": 0.0, "n": 1, "class": 3}
    assert Metric.from_dict({"value": None, "stderr": None, "n": 0}).n == 0
    d = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert d.value == 0.5 and d.n == 4
    # paired differences cancel item difficulty: a constant offset has zero standard error
    d2 = paired_difference([5.0, 1.0, 3.0], [4.0, 0.0, 2.0])
    assert d2 == Metric(1.0, 0.0, 3)
    with pytest.raises(ValueError):
        paired_difference([1], [1, 2])
    # mappings are matched by item id; items missing on either side are left out
    d3 = paired_difference({"x": 1.0, "y": 0.0, "z": 1.0}, {"y": 1.0, "x": 1.0})
    assert d3 == Metric(-0.5, 0.5, 2)
    a = [{"id": "x", "scores": {"acc": 1.0}}, {"id": "y", "scores": {"acc": 0.0}}, {"id": "z", "scores": {}}]
    b = [{"id": "y", "scores": {"acc": 1.0}}, {"id": "x", "scores": {"acc": 1.0}}]
    assert paired_compare(a, b, "acc") == Metric(-0.5, 0.5, 2)
    with pytest.raises(ValueError, match="no item"):
        paired_compare(a, b, "f1")
    s = spread([Metric(0.5, 0.1, 10), Metric(0.2, 0.1, 10)])
    assert s.value == pytest.approx(0.3) and s.n == 20 and s.stderr == pytest.approx(math.sqrt(0.02))


def test_derangement_picks_other_item_with_different_gold():
    golds = ["a", "b", "a", "c", None, "a"]
    d = derangement(golds)
    for i, j in enumerate(d):
        if golds[i] is None:
            assert j is None
        else:
            assert j is not None and j != i and golds[j] != golds[i] and golds[j] is not None
    assert derangement(["x"]) == [None] and derangement(["x", "x"]) == [None, None]
    assert d == derangement(golds)  # deterministic
