"""Extraction and scoring through the whole runner, with canned completions (no model)."""

import json

import pytest

from lorasoups.eval.generate import CannedGenerator
from lorasoups.eval.metrics import compare_runs
from lorasoups.eval.registry import get_task, load_tasks
from lorasoups.eval.runner import evaluate
from lorasoups.eval.samples import read_samples

CODE = {
    # a string with a thousands separator is parsed
    "Q0": "Let’s go ahead and solve this using Python:\n```python\ndef solution():\n    return '1,234'\n```",
    # code without a fence, prose after it; negative answer
    "Q1": "def solution():\n    a = 3\n    return a - 8\nSo the answer is -5.",
    # two code blocks: a call, then the definition; float answer
    "Q2": "```\nprint(solution())\n```\nwhere\n```python\ndef solution():\n    return 5 / 2\n```",
    # prints instead of returning
    "Q3": "```\ndef solution():\n    print(6)\n```",
    "Q4": "```\ndef solution():\n    return 1 / 0\n```",
    "Q5": "I think it is 8.",
    # off by 50 on 1e6: wrong at 1e-3, right at relative 1e-4
    "Q6": "```\ndef solution():\n    return 1000050\n```",
    "Q7": "```\ndef solution():\n    while True:\n        pass\n```",
}
WORDS = {
    "Q0": "She has 1,200 + 34 = 1,234 apples. The answer is 1,234.",
    "Q1": "The temperature dropped to -5 degrees",
    "Q2": "Each gets 5 / 2 slices.\n#### 2.5",
    "Q3": "The answer is 6. Then 7 more were bought.",
    "Q4": "no idea",
}


def _user(prompt: str) -> str:
    """The last user turn of a ChatML prompt (canned answers key on the item, not the demos)."""
    return prompt.rsplit("<|im_start|>user\n", 1)[-1]


def canned(table):
    return CannedGenerator(lambda p: next((v for k, v in table.items() if k in _user(p)), ""))


def test_registry_lists_tasks_with_versions():
    reg = load_tasks()
    for n in ["gsm_hard", "gsm8k", "addsub", "multiarith", "singleeq", "svamp", "addsub_words", "gsm8k_words",
              "mbpp", "qabot_dnd", "bio_qa", "rc_bio", "prompt_formats"]:
        t = reg.get(n)
        assert t.name == n and t.version and t.kind and t.description and t.metrics


def test_math_with_code_scoring(fake_data, tmp_path, tiny_dir):
    out = tmp_path / "run"
    res = evaluate(str(tiny_dir), None, ["multiarith"], out, generator=canned(CODE), data_dir=fake_data,
                   allow_code_execution=True, likelihood=False, timeout_s=1.0, shots=2)
    m = res["tasks"]["multiarith"]["metrics"]
    assert {k: m[k]["value"] for k in m} == {
        "exec_acc": 3 / 8, "exec_acc_rel": 4 / 8, "exec_acc_printed": 4 / 8, "extract_failed": 1 / 8,
        "raised": 1 / 8, "timed_out": 1 / 8, "no_return": 1 / 8}
    assert all(v["n"] == 8 for v in m.values())
    recs = {r["id"]: r for r in read_samples(out / "multiarith" / "samples.jsonl")}
    assert recs["multiarith-0"]["answer"] == 1234.0 and recs["multiarith-0"]["scores"]["exec_acc"] == 1.0
    assert recs["multiarith-1"]["answer"] == -5.0 and "return a - 8" in recs["multiarith-1"]["extracted"]
    assert recs["multiarith-2"]["answer"] == 2.5 and "print" not in recs["multiarith-2"]["extracted"]
    assert recs["multiarith-3"]["status"] == "no_return" and recs["multiarith-3"]["printed_answer"] == 6.0
    assert recs["multiarith-4"]["status"] == "error" and "ZeroDivisionError" in recs["multiarith-4"]["error"]
    assert recs["multiarith-5"]["status"] == "extract_failed"
    assert recs["multiarith-7"]["status"] == "timeout"
    assert res["tasks"]["multiarith"]["exec_status"]["ok"] == 4
    assert res["tasks"]["multiarith"]["options"]["shots"] == 2
    # the prompt carries the demos as chat turns before the question
    p = recs["multiarith-0"]["prompt"]
    assert p.count("<|im_start|>user") == 3 and "Olivia has $23" in p and p.endswith("<|im_start|>assistant\n")
    doc = json.loads((out / "multiarith" / "results.json").read_text())
    assert doc["sandbox"]["isolation"] and doc["options"]["allow_code_execution"] is True
    assert doc["provenance"]["package_versions"]["torch"] and doc["wall_time_s"] >= 0
    # a metric is written once: in the task's folder; the top-level file only names it
    assert doc["tasks"]["multiarith"]["metrics"]["exec_acc"]["n"] == 8
    assert json.loads((out / "results.json").read_text())["tasks"] == {"multiarith": "multiarith/results.json"}


def test_math_in_words_strict_and_flexible(fake_data, tiny_dir):
    res = evaluate(str(tiny_dir), None, ["multiarith_words"], None, generator=canned(WORDS), data_dir=fake_data,
                   likelihood=False)
    m = res["tasks"]["multiarith_words"]["metrics"]
    assert m["acc_strict"]["value"] == 3 / 8
    assert m["acc_flexible"]["value"] == 3 / 8
    assert m["no_number"]["value"] == 4 / 8


def test_mbpp_pass_at_1(fake_data, tmp_path, tiny_dir):
    table = {
        "square a number": "```python\ndef square(x):\n    return x ** 2\n```",
        "double a number": "```python\ndef double(x):\n    return x + 1\n```",
        "BASE plus": "def plus(x):\n    return BASE + x\n",
    }
    res = evaluate(str(tiny_dir), None, ["mbpp"], tmp_path / "m", generator=canned(table), data_dir=fake_data,
                   allow_code_execution=True, likelihood=False)
    m = res["tasks"]["mbpp"]["metrics"]
    assert m["pass_at_1"]["value"] == pytest.approx(2 / 3)  # square; plus (unfenced, uses the set-up code)
    assert m["failed_assert"]["value"] == pytest.approx(1 / 3)
    assert res["tasks"]["mbpp"]["options"]["shots"] == 2  # only task ids 2, 3 exist in the fake file


def test_qa_scores(fake_data, tiny_dir):
    table = {"QA0": "The correct answer is a d20 is rolled", "QA1": "Cunning Action", "QA2": ""}
    res = evaluate(str(tiny_dir), None, ["qabot_dnd"], None, generator=canned(table), data_dir=fake_data,
                   likelihood=False)
    m = res["tasks"]["qabot_dnd"]["metrics"]
    assert m["exact_match"]["value"] == pytest.approx(1 / 3)
    # QA1: 2 of 2 predicted tokens match, 2 of 5 gold tokens -> F1 = 2*1*0.4/1.4
    assert m["f1"]["value"] == pytest.approx((1 + 2 * 0.4 / 1.4 + 0) / 3)
    assert m["rouge_l"]["value"] == pytest.approx((1 + 2 * 0.4 / 1.4 + 0) / 3)
    # the SQuAD-normalised variant: the same here except the empty answer (0 in both)
    assert m["rouge_l_squad"]["value"] == pytest.approx((1 + 2 * 0.4 / 1.4 + 0) / 3)


def test_prompt_formats_catches_a_constant_answer(fake_data, tiny_dir):
    # format 3 answered correctly, the other formats always "0"
    def fn(p):
        u = _user(p)
        if "SENTENCE\t" in u:
            return "the correct answer is 2" if "two birds" in u else "the correct answer is 0"
        return "the correct answer is 0"

    res = evaluate(str(tiny_dir), None, ["prompt_formats"], None, generator=CannedGenerator(fn), data_dir=fake_data,
                   likelihood=False)
    m = res["tasks"]["prompt_formats"]["metrics"]
    assert m["acc_format3"]["value"] == 1.0 and m["acc_format7"]["value"] == pytest.approx(2 / 3)
    assert m["spread"]["value"] == pytest.approx(1 / 3)
    assert m["acc"]["value"] == pytest.approx(9 / 12)
    assert m["acc_class0"]["value"] == 1.0 and m["acc_class2"]["value"] == pytest.approx(1 / 4)
    assert m["pred_majority_rate"]["value"] == pytest.approx(11 / 12) and m["pred_majority_rate"]["class"] == 0
    assert m["gold_majority_rate"]["value"] == pytest.approx(2 / 3)


def test_rescore_and_paired_comparison(fake_data, tmp_path, tiny_dir):
    a = tmp_path / "a"
    evaluate(str(tiny_dir), None, ["multiarith_words"], a, generator=canned(WORDS), data_dir=fake_data, likelihood=False)
    worse = dict(WORDS, Q0="The answer is 1.")
    b = tmp_path / "b"
    evaluate(str(tiny_dir), None, ["multiarith_words"], b, generator=canned(worse), data_dir=fake_data, likelihood=False)
    d = compare_runs(a, b, "multiarith_words", "acc_strict")
    assert d.value == pytest.approx(1 / 8) and d.n == 8
    # re-scoring a run's samples reproduces its metrics without a model
    r = evaluate(str(tiny_dir), None, ["multiarith_words"], tmp_path / "c", data_dir=fake_data, rescore=a)
    assert r["tasks"]["multiarith_words"]["metrics"]["acc_strict"]["value"] == 3 / 8


def test_stop_strings_and_pal_gold(fake_data):
    from lorasoups.eval.generate import truncate_at_stop
    from lorasoups.eval.tasks.math_code import pal_response

    t = get_task("gsm_hard")
    text = "Let’s go:\n```\ndef solution():\n    return 1\n```\nMore text ```x```"
    cut, stopped = truncate_at_stop(text, (), t.stop_rule(t.load_items(fake_data)[0]))
    assert stopped and cut.endswith("return 1\n```")
    assert truncate_at_stop("abc STOP def", ["STOP"]) == ("abc ", True)
    items = t.load_items(fake_data)
    assert items[0].gold == 4123459.0
    assert items[0].gold_text == pal_response(
        "def solution():\n    apples = 3 + 4123456\n    result = apples\n    return result")
    assert '"""' not in items[0].gold_text and items[0].gold_text.endswith("return result\n```")


def test_prompt_formats_no_count_at_all(fake_data, tiny_dir):
    # a model that never gives a count: accuracy 0, every item no_count, majority rate 0 (defined)
    res = evaluate(str(tiny_dir), None, ["prompt_formats"], None, generator=CannedGenerator(lambda p: "I cannot tell."),
                   data_dir=fake_data, likelihood=False)
    m = res["tasks"]["prompt_formats"]["metrics"]
    assert m["acc"]["value"] == 0.0 and m["no_count"]["value"] == 1.0
    assert m["pred_majority_rate"]["value"] == 0.0 and m["pred_majority_rate"]["class"] is None
    assert m["pred_majority_rate"]["n"] == 12


def test_bio_qa_in_text_keeps_the_questions_with_a_passage(tmp_path):
    recs = [{"instruction": "Q0?", "answer": "A0", "context": "Passage zero."},
            {"instruction": "Q1?", "answer": "A1", "context": ""},
            {"instruction": "Q2?", "answer": "A2", "context": "Passage two."},
            {"instruction": "Q3?", "answer": "A3"}]
    f = tmp_path / "lora_soups/test_datasets/qa/biology_test.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(recs))
    full = get_task("bio_qa").load_items(tmp_path)
    part = get_task("bio_qa_in_text").load_items(tmp_path)
    assert [it.id for it in full] == ["bio_qa-0", "bio_qa-1", "bio_qa-2", "bio_qa-3"]
    # the index in the full set is kept, so the two tasks' items pair up
    assert [(it.id, it.gold) for it in part] == [("bio_qa_in_text-0", "A0"), ("bio_qa_in_text-2", "A2")]
    assert [it.id for it in get_task("bio_qa_in_text").load_items(tmp_path, limit=1)] == ["bio_qa_in_text-0"]
