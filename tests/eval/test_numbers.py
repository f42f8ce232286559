"""Numbers as models write them (issue 13, item 1): LaTeX and prose number forms in every extractor."""

import pytest

from lorasoups.eval.extract import (all_numbers, boxed_contents, last_number, normalize_number_text, parse_number,
                                    strict_number)
from lorasoups.eval.registry import Item, get_task

# (completion, strict, flexible)
CASES = [
    # the two examples: 9500 from both extractors
    (r"\boxed{$9{,}500}", 9500.0, 9500.0),
    (r"The answer is $9{,}500.", 9500.0, 9500.0),
    # the same number in other LaTeX spellings
    (r"\boxed{\$9{,}500}", 9500.0, 9500.0),
    (r"The answer is \(\$9{,}500\).", 9500.0, 9500.0),
    (r"The answer is $$9{,}500$$", 9500.0, 9500.0),
    (r"The answer is \[ 9\,500 \]", 9500.0, 9500.0),
    (r"The answer is 9\ 500 dollars.", 9500.0, 9500.0),
    (r"The answer is 9~500.", 9500.0, 9500.0),
    ("The answer is 9\u202f500.", 9500.0, 9500.0),  # narrow no-break space as group separator
    ("The answer is 9\u00a0500.", 9500.0, 9500.0),
    (r"\boxed{9500 \text{ dollars}}", 9500.0, 9500.0),
    (r"\boxed{\text{\$}9{,}500}", 9500.0, 9500.0),
    (r"She pays \$9,500 in total, so \boxed{\textbf{9,500}}.", 9500.0, 9500.0),
    (r"Total: \$1{,}234{,}567.50. The answer is \$1{,}234{,}567.50", 1234567.5, 1234567.5),
    (r"\boxed{1\,234\,567}", 1234567.0, 1234567.0),
    ("#### $9,500", 9500.0, 9500.0),
    ("The answer is: **$9,500**", 9500.0, 9500.0),
    ("The answer is 9,500.00.", 9500.0, 9500.0),
    # signs: ASCII, Unicode minus, plus, either side of the currency sign, inside math mode
    ("The answer is $-5$.", -5.0, -5.0),
    ("The answer is -$5.", -5.0, -5.0),
    ("The answer is −12.", -12.0, -12.0),
    ("The answer is +7.", 7.0, 7.0),
    (r"\boxed{-3.25}", -3.25, -3.25),
    (r"The temperature fell to \(-4\,000\) m, \boxed{-4{,}000}", -4000.0, -4000.0),
    # decimals
    ("The answer is .5", 0.5, 0.5),
    ("The answer is 0.125.", 0.125, 0.125),
    # fractions where they are unambiguous
    (r"\boxed{\frac{3}{4}}", 0.75, 0.75),
    (r"The answer is \dfrac{10}{4}.", 2.5, 2.5),
    (r"The answer is \tfrac12 cup.", 0.5, 0.5),
    (r"The answer is 1\frac{1}{2} cups.", 1.5, 1.5),
    (r"The answer is -\frac{3}{4}.", -0.75, -0.75),
    ("The answer is 3/4.", 0.75, 0.75),
    # percent and units after the number
    (r"The answer is 25\%.", 25.0, 25.0),
    (r"\boxed{x = 5}", 5.0, 5.0),
    (r"\boxed{5 \text{ apples}}", 5.0, 5.0),
    # the last marker wins; flexible is the last number anywhere
    (r"First \boxed{3}, then the answer is 4.", 4.0, 4.0),
    ("The answer is 1,234. Then 5 more", 1234.0, 5.0),
]


@pytest.mark.parametrize("text,strict,flex", CASES)
def test_strict_and_flexible_read_latex_and_prose_numbers(text, strict, flex):
    assert strict_number(text) == pytest.approx(strict)
    assert last_number(text) == pytest.approx(flex)


# forms that must NOT be read as one joined number, and text that must not change
NOT_JOINED = [
    ("1,2,3", [1.0, 2.0, 3.0]),          # a list, not 123
    ("1, 2, 3", [1.0, 2.0, 3.0]),
    ("1,23", [1.0, 23.0]),               # not a thousands group
    ("3 500", [3.0, 500.0]),             # an ASCII space never joins digits
    ("12/25/2023", [12.0, 25.0, 2023.0]),  # a date is not a fraction
    ("3-2 = 1", [3.0, 2.0, 1.0]),        # a minus between numbers is an operator
    ("x = 3-2", [3.0, 2.0]),
    ("5,000-6,000 people", [5000.0, 6000.0]),
    ("version 1.2.3", [1.2]),
    ("100,200,300", [100200300.0]),      # written as a thousands-separated number: read as one
    ("1/0", []),                         # no number: zero denominator
]


@pytest.mark.parametrize("text,nums", NOT_JOINED)
def test_what_is_not_one_number(text, nums):
    assert all_numbers(text) == nums


@pytest.mark.parametrize("text", ["1,2,3", "no digits at all", "She has 3 apples.", "a {b} c"])
def test_normalisation_leaves_plain_text_alone(text):
    assert normalize_number_text(text) == text


def test_normalisation_rewrites_only_number_forms():
    assert normalize_number_text(r"\$9{,}500") == "$9,500"
    assert normalize_number_text(r"9\,500\,000 and 3\,5") == "9500000 and 3 5"  # \, joins 3-digit groups only
    assert normalize_number_text(r"\frac{x}{2}") == "(x)/(2)"
    assert normalize_number_text(r"\left( 3 \right)").split() == ["(", "3", ")"]
    assert normalize_number_text(r"\boxed{\text{\textbf{7}}}") == r"\boxed{7}"
    assert boxed_contents(r"a \boxed{\frac{1}{2}} b \fbox{3}") == [(2, r"\frac{1}{2}"), (24, "3")]
    assert boxed_contents(r"\boxed{12") == [(0, "12")]  # unclosed (cut by the token budget)


@pytest.mark.parametrize("text,val", [
    (r"\$9{,}500", 9500.0), ("$9{,}500", 9500.0), (r"9\,500", 9500.0), (r"\boxed{9{,}500}", 9500.0),
    (r"\text{9,500}", 9500.0), (r"\frac{3}{4}", 0.75), ("3/4", 0.75), ("-3/4", -0.75), ("$-3", -3.0), ("+5", 5.0),
    ("50%", 50.0), ("1e9", 1e9), ("7.", 7.0), (".5", 0.5), ("9\u202f500", 9500.0),
    ("1/0", None), ("9500 dollars", None), ("1,2,3", None), ("--5", None), ("-$-5", None), ("", None), ("x", None),
])
def test_parse_number_latex_and_prose(text, val):
    assert parse_number(text) == val


@pytest.mark.parametrize("completion", [
    r"\boxed{$9{,}500}", r"The answer is $9{,}500.", r"So the cost is $9{,}500$. #### 9,500",
    r"The answer is \(9\,500\)", r"Final: \boxed{\$9{,}500 \text{ in total}}",
])
def test_math_words_task_scores_both_extractions(completion):
    t = get_task("gsm8k_words")
    rec = t.score(Item("gsm8k_words-0", "q", None, 9500.0, None), completion)
    assert rec["extracted"] == {"strict": 9500.0, "flexible": 9500.0}
    assert rec["scores"]["acc_strict"] == 1.0 and rec["scores"]["acc_flexible"] == 1.0


def test_math_code_reads_a_returned_latex_string_and_printed_numbers():
    from types import SimpleNamespace

    t = get_task("gsm8k")
    item = Item("gsm8k-0", "q", None, 9500.0, None)
    ok = SimpleNamespace(status="ok", error=None, stdout="", value={"number": None, "str": r"\$9{,}500"})
    assert t.score(item, "", ok, "code")["scores"]["exec_acc"] == 1.0
    printed = SimpleNamespace(status="ok", error=None, stdout="Total: $9{,}500\n", value={"number": None, "str": None})
    assert t.score(item, "", printed, "code")["scores"]["exec_acc_printed"] == 1.0


@pytest.mark.parametrize("text,val", [
    ("The answer is 2.0107e-06.", 2.0107e-06),            # Python's repr of GSM-Hard's small answers
    ("The answer is -2.4967e-05", -2.4967e-05),
    ("The answer is 1.5E3.", 1500.0),
    (r"The answer is 1.5 \times 10^{3}.", 1500.0),
    (r"\boxed{2.5 \cdot 10^{-3}}", 0.0025),
    ("The answer is 12.5×10^3", 12500.0),
])
def test_scientific_notation(text, val):
    assert strict_number(text) == pytest.approx(val) and last_number(text) == pytest.approx(val)


def test_templated_gold_answers_score_1_on_every_math_words_task():
    # the likelihood templates ("The answer is n.", n in Python's repr) read back as the gold answer
    from lorasoups.eval.registry import format_number

    for gold in [2.0107e-06, -2.4967e-05, 5.158e-07, 1e16, 3431580.0, -12.5, 0.125]:
        text = f"The answer is {format_number(gold)}."
        assert strict_number(text) == pytest.approx(gold, rel=1e-12)
        assert last_number(text) == pytest.approx(gold, rel=1e-12)
