"""``rouge_l`` is ROUGE-L as the rouge-score package computes it; the SQuAD-normalised variant has its
own name (issue 13, item 8)."""

import pytest
from rouge_score import rouge_scorer

from lorasoups.eval.metrics import rouge_l, rouge_l_squad

PAIRS = [  # (prediction, gold)
    ("A d20 is rolled.", "A d20 is rolled."),
    ("Cunning Action", "Cunning Action lets you dash"),
    ("The cat sat.", "cat sat"),
    ("It's a d20.", "d20"),
    ("the plane of fire", "The Elemental Plane of Fire"),
    ("D&D 5e rules", "the rules of D&D 5e"),
    ("mitochondria is the powerhouse of the cell", "The mitochondrion is the powerhouse of a cell."),
    ("naïve café", "naive cafe"),
    ("ATP synthase, in the inner membrane", "ATP synthase (inner mitochondrial membrane)"),
    ("y x", "x y"),
    ("x y z w", "a x z w"),
    ("1,000 gold pieces", "1000 gold pieces"),
    ("", "something"),
    ("something", ""),
    ("running dogs", "run dog"),
    ("Roll initiative: Dexterity check", "a Dexterity check"),
]


@pytest.mark.parametrize("pred,gold", PAIRS)
def test_rouge_l_equals_the_rouge_score_package(pred, gold):
    ref = rouge_scorer.RougeScorer(["rougeL"]).score(gold, pred)["rougeL"].fmeasure
    assert rouge_l(pred, gold) == pytest.approx(ref, abs=1e-12)
    ref_stem = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(gold, pred)["rougeL"].fmeasure
    assert rouge_l(pred, gold, use_stemmer=True) == pytest.approx(ref_stem, abs=1e-12)


def test_rouge_l_hand_computed():
    # LCS of [cunning action] in [cunning action lets you dash]: 2; P = 1, R = 2/5
    assert rouge_l("Cunning Action", "Cunning Action lets you dash") == pytest.approx(2 * 0.4 / 1.4)
    # articles are tokens for rouge-score: [the cat sat] vs [cat sat] -> P = 2/3, R = 1
    assert rouge_l("The cat sat.", "cat sat") == pytest.approx(0.8)
    # punctuation splits tokens: [it s a d20] vs [d20] -> P = 1/4, R = 1
    assert rouge_l("It's a d20.", "d20") == pytest.approx(0.4)
    assert rouge_l("running dogs", "run dog") == 0.0 and rouge_l("running dogs", "run dog", use_stemmer=True) == 1.0
    assert rouge_l("", "") == 0.0  # no tokens on either side


@pytest.mark.parametrize("pred,gold,rouge,squad", [
    ("The cat sat.", "cat sat", 0.8, 1.0),                # articles: kept vs dropped
    ("It's a d20.", "d20", 0.4, 2 * 0.5 / 1.5),            # "it's" is 2 tokens vs "its"
    ("D&D", "dd", 0.0, 1.0),                              # & splits vs is removed
    ("", "", 0.0, 1.0),                                   # empty pair
])
def test_the_two_variants_differ_where_normalisation_differs(pred, gold, rouge, squad):
    assert rouge_l(pred, gold) == pytest.approx(rouge)
    assert rouge_l_squad(pred, gold) == pytest.approx(squad)


def test_qa_tasks_report_both_names():
    from lorasoups.eval.registry import Item, get_task

    for name in ("qabot_dnd", "bio_qa", "rc_bio"):
        t = get_task(name)
        assert {"rouge_l", "rouge_l_squad", "f1", "exact_match"} <= set(t.metrics)
    rec = get_task("bio_qa").score(Item("bio_qa-0", "q", None, "cat sat", "cat sat"), "The correct answer is the cat sat.")
    assert rec["extracted"] == "the cat sat."
    assert rec["scores"]["rouge_l"] == pytest.approx(0.8) and rec["scores"]["rouge_l_squad"] == 1.0
