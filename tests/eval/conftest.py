import json
from pathlib import Path

import pytest

MATH_ITEMS = [  # question marker, gold
    ("Q0 apples", "1234"), ("Q1 temperature", "-5"), ("Q2 pizza", "2.5"), ("Q3 pens", "6"),
    ("Q4 cars", "7"), ("Q5 birds", "8"), ("Q6 money", "1000000"), ("Q7 loop", "9"),
]
DEMOS = [
    {"instruction": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "input": "", "answer": "8",
     "output": "Let’s go ahead and solve this using Python:\n```\ndef solution():\n    return 23 - 5 * 3\n```"},
    {"instruction": "Michael had 58 golf balls and lost 25. How many are left?", "input": "", "answer": "33",
     "output": "Let’s go ahead and solve this using Python:\n```\ndef solution():\n    return 58 - 25\n```"},
]
GSM_HARD = [
    {"input": "Tom has 3 apples and buys 4123456 more. How many apples?",
     "code": "\ndef solution():\n    \"\"\"Tom has 3 apples and buys 4 more.\"\"\"\n    apples = 3 + 4123456\n    result = apples\n    return result\n\n\n",
     "target": 4123459.0},
    {"input": "A train travels 60 km per hour for 2 hours. How far?",
     "code": "\ndef solution():\n    \"\"\"doc\"\"\"\n    return 60 * 2\n", "target": 120.0},
    {"input": "Sara has 10 pens and gives away 7. How many are left?",
     "code": "\ndef solution():\n    return 10 - 7\n", "target": 3.0},
]
MBPP = [
    {"task_id": 2, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
     "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 3, "text": "Write a function to negate a number.", "code": "def neg(a):\n    return -a",
     "test_list": ["assert neg(1) == -1"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a function to square a number.", "code": "def square(x):\n    return x * x",
     "test_list": ["assert square(3) == 9", "assert square(-2) == 4"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to double a number.", "code": "def double(x):\n    return 2 * x",
     "test_list": ["assert double(3) == 6"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function returning BASE plus x.", "code": "def plus(x):\n    return BASE + x",
     "test_list": ["assert plus(1) == 11"], "test_setup_code": "BASE = 10", "challenge_test_list": []},
]
QA = [
    {"instruction": "QA0: Which die is rolled for initiative?", "answer": "A d20 is rolled.",
     "output": "The correct answer is A d20 is rolled.", "context": "..."},
    {"instruction": "QA1: What does a rogue gain at 2nd level?", "answer": "Cunning Action lets you dash",
     "output": "The correct answer is Cunning Action lets you dash", "context": "..."},
    {"instruction": "QA2: Name the plane of fire.", "answer": "The Elemental Plane of Fire",
     "output": "The correct answer is The Elemental Plane of Fire", "context": "..."},
]
PF_LEADS = {3: "SENTENCE\t", 7: "Sentence ", 8: "sentence\n    ", 10: "sentence \n\t"}


def _pf_items(fmt: int) -> list[dict]:
    out = []
    for i, (sent, k) in enumerate([("the cat sat on a mat", 0), ("a dog in the fog", 0), ("two birds on one wire", 2)]):
        out.append({"instruction": f"Please count the number of words. {PF_LEADS[fmt]}'{sent}'. item{i} format{fmt}.",
                    "input": "", "output": f"the correct answer is {k}", "answer": f"answer{k}"})
    return out


def write(p: Path, obj) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        p.write_text(json.dumps(obj))


@pytest.fixture
def fake_data(tmp_path) -> Path:
    """A data dir with small hand-made files at the catalogue's paths."""
    d = tmp_path / "data"
    write(d / "multiarith/test.json",
          [{"instruction": f"{q}: how many?", "input": "", "output": "model-written", "answer": a} for q, a in MATH_ITEMS])
    write(d / "lora_soups/few_shot_demo/math.json", DEMOS)
    write(d / "gsm_hard/gsmhardv2.jsonl", GSM_HARD)
    write(d / "mbpp/mbpp.jsonl", MBPP)
    write(d / "lora_soups/test_datasets/qa/test.json", QA)
    for f in PF_LEADS:
        write(d / f"lora_soups/test_datasets/prompt_formats/test_instructions_format{f}.json", _pf_items(f))
    return d
