"""prompt_formats takes the LAST number of a reply, the LoRA Soups release's rule (issue 13, item 7)."""

import pytest

from lorasoups.eval.extract import extract_count
from lorasoups.eval.generate import CannedGenerator
from lorasoups.eval.runner import evaluate

from lorasoups.eval.tasks.prompt_formats import FORMATS


@pytest.mark.parametrize("reply,count", [
    ("the correct answer is 3", 3),                                          # the release's response style
    ("The sentence has 11 words and 3 of them contain the letter 'o'.", 3),  # the kind: was 11
    ("The sentence has 9 words and 0 of them contain the letter", 0),
    ("There are 10 words. 2 words contain the letter.", 2),
    ("The sentence has eleven words and two of them contain the letter 'o'.", 2),  # number words
    ("The sentence has 8 words and none of them contain the letter 'z'.", 0),
    ("Answer: two", 2),
    ("2 words contain 'o': 'two' and 'on'", 2),                  # quoted words are not counts
    ("'a dog in the fog' has 1 word with 'g' twice... no: 2", 2),
    ("the correct answer is '4'", 4),                            # only quoted: still found
    ("Counting: 1, 2, 3, 4. So 4", 4),
    ("don't know, maybe 5", 5),                                   # an apostrophe opens no quotation
    ("I cannot tell.", None),
    ("", None),
])
def test_extract_count_is_the_last_number(reply, count):
    assert extract_count(reply) == count


def _replies(style: str):
    """A reply in ``style`` for each fake item, giving its gold count k (items: golds 0, 0, 2)."""
    def fn(prompt: str) -> str:
        user = prompt.rsplit("<|im_start|>user\n", 1)[-1]
        k = 2 if "two birds" in user else 0
        n = len(user.split("'")[1].split())  # words of the sentence
        return {
            "release": f"the correct answer is {k}",
            "sentence": f"The sentence has {n} words and {k} of them contain the letter",
            "echo": f"In '{user.split(chr(39))[1]}' there are {n} words; {k} contain the letter.",
            "words": f"The sentence has {n} words and {['zero', 'one', 'two'][k]} of them contain the letter.",
        }[style]
    return fn


@pytest.mark.parametrize("style", ["release", "sentence", "echo", "words"])
def test_every_format_scores_last_number_replies(fake_data, tiny_dir, style):
    res = evaluate(str(tiny_dir), None, ["prompt_formats"], None, generator=CannedGenerator(_replies(style)),
                   data_dir=fake_data, likelihood=False)
    m = res["tasks"]["prompt_formats"]["metrics"]
    for f in FORMATS:  # 3, 7, 8, 10
        assert m[f"acc_format{f}"]["value"] == 1.0 and m[f"acc_format{f}"]["n"] == 3
    assert m["acc"]["value"] == 1.0 and m["spread"]["value"] == 0.0 and m["no_count"]["value"] == 0.0


@pytest.mark.parametrize("fmt,reply", [
    (3, "ANSWER\t3"), (7, "Answer 3"), (8, "answer\n    3"), (10, "answer \n\t3"),  # echoing the format's tail
    (3, "SENTENCE\t'a dog' has 2 words; ANSWER\t3"), (7, "Sentence 'a b c d' has 4 words. Answer 3"),
    (8, "sentence\n    has 12 words\nanswer\n    3"), (10, "sentence \n\t12 words\nanswer \n\t3"),
])
def test_each_format_reply_tail_gives_the_count(fmt, reply):
    assert fmt in FORMATS and extract_count(reply) == 3
