"""Catalogue of the public datasets lorasoups knows, located in the data dir (see
:func:`lorasoups.paths.find_data_dir`). Data is read in place and never copied."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .paths import find_data_dir
from .registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset file in the data dir.

    Attributes:
        name: catalogue name.
        relpath: path relative to the data dir.
        fmt: ``json`` (a list of records), ``jsonl``, ``text`` (raw text), ``squad`` (nested).
        kind: ``instruction``, ``qa``, ``text``, ``test``, ``demo``.
        description: one line.
    """

    name: str
    relpath: str
    fmt: str
    kind: str
    description: str

    def path(self, data_dir: str | Path | None = None) -> Path:
        """Absolute path of the file. Raises DataError naming where it looked if it is missing."""
        root = find_data_dir(data_dir)
        p = root / self.relpath
        if not p.is_file():
            raise DataError(f"dataset {self.name!r}: file {p} not found (data dir {root})")
        return p

    def provenance(self, data_dir: str | Path | None = None) -> Path:
        return find_data_dir(data_dir) / self.relpath.split("/")[0] / "PROVENANCE.md"


DATASETS: Registry[DatasetInfo] = Registry("dataset")

for _d in [
    DatasetInfo("gsm8k", "gsm8k/train.jsonl", "jsonl", "instruction", "GSM8K train: question -> worked solution '#### n' (math skill; stands in for MetaMathQA)"),
    DatasetInfo("gsm8k_test", "gsm8k/test.jsonl", "jsonl", "test", "GSM8K test (1,319)"),
    DatasetInfo("gsm_hard", "gsm_hard/gsmhardv2.jsonl", "jsonl", "test", "GSM-Hard (1,319) with gold Python programs"),
    DatasetInfo("addsub", "addsub/test.json", "json", "test", "AddSub (395)"),
    DatasetInfo("multiarith", "multiarith/test.json", "json", "test", "MultiArith (600)"),
    DatasetInfo("singleeq", "singleeq/test.json", "json", "test", "SingleEq (508)"),
    DatasetInfo("svamp", "svamp/test.json", "json", "test", "SVAMP (1,000)"),
    DatasetInfo("codealpaca", "codealpaca/code_alpaca_2k.json", "json", "instruction", "Code Alpaca 2k sample (code skill; stands in for CodeAlpaca-20k)"),
    DatasetInfo("codealpaca_new", "codealpaca/new_codealpaca.json", "json", "instruction", "Code Alpaca new_codealpaca.json (4,535)"),
    DatasetInfo("mbpp", "mbpp/mbpp.jsonl", "jsonl", "test", "MBPP (974): text -> code, with test asserts"),
    DatasetInfo("alpaca", "alpaca_subset/alpaca_5000.json", "json", "instruction", "Stanford Alpaca 5k subset (QA/instruction skill)"),
    DatasetInfo("squad_v2_dev", "squad_v2_dev/squad_v2_dev_from_explorer.json", "squad", "qa", "SQuAD 2.0 dev (11,873 questions): context + question -> answer"),
    DatasetInfo("dnd_manual", "lora_soups/skill_datasets/game.txt", "text", "text", "D&D rules text (raw text, knowledge skill for QABot)"),
    DatasetInfo("bio_passages", "lora_soups/test_datasets/qa/biology_test.json", "bio_passages", "text", "Biology passages: the distinct 'context' fields of the bio QA set (raw text)"),
    DatasetInfo("qabot_dnd", "lora_soups/test_datasets/qa/test.json", "json", "test", "QABot: 50 questions on the D&D manual"),
    DatasetInfo("bio_qa", "lora_soups/test_datasets/qa/biology_test.json", "json", "test", "Biology QA (45 questions)"),
    DatasetInfo("rc_bio", "lora_soups/test_datasets/rc/test.json", "json", "test", "Reading comprehension with context (201)"),
    DatasetInfo("gsm_hard_lora_soups", "lora_soups/test_datasets/math/test.json", "json", "test", "GSM-Hard as in the LoRA Soups release (instruction, answer)"),
    DatasetInfo("prompt_format1", "lora_soups/skill_datasets/prompt_formats/train_instructions_task_format1.json", "json", "instruction", "Prompt-format skill: train format 1 (6,000)"),
    DatasetInfo("prompt_format2", "lora_soups/skill_datasets/prompt_formats/train_instructions_task_format2.json", "json", "instruction", "Prompt-format skill: train format 2 (6,000)"),
    DatasetInfo("prompt_format4", "lora_soups/skill_datasets/prompt_formats/train_instructions_task_format4.json", "json", "instruction", "Prompt-format skill: train format 4 (6,000)"),
    DatasetInfo("prompt_format3_test", "lora_soups/test_datasets/prompt_formats/test_instructions_format3.json", "json", "test", "Prompt formats: test format 3 (417)"),
    DatasetInfo("prompt_format7_test", "lora_soups/test_datasets/prompt_formats/test_instructions_format7.json", "json", "test", "Prompt formats: test format 7 (417)"),
    DatasetInfo("prompt_format8_test", "lora_soups/test_datasets/prompt_formats/test_instructions_format8.json", "json", "test", "Prompt formats: test format 8 (417)"),
    DatasetInfo("prompt_format10_test", "lora_soups/test_datasets/prompt_formats/test_instructions_format10.json", "json", "test", "Prompt formats: test format 10 (417)"),
    DatasetInfo("math_demos", "lora_soups/few_shot_demo/math.json", "json", "demo", "PAL-style few-shot demos (8) from the LoRA Soups release"),
]:
    DATASETS.register(_d.name, _d)


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """Read a JSON list or a JSONL file of objects.

    Raises:
        DataError: unreadable file, invalid JSON (with the line for JSONL), or a record that is
            not an object; the message names the file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped[:1] == "{" and "\n{" in stripped):
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i} is not valid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}: line {i} is not a JSON object")
            out.append(rec)
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: record {i + 1} is not a JSON object")
    return data


#: Suffixes of tabular files :func:`read_records` reads (besides ``.json`` / ``.jsonl``).
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a local data file, by suffix: ``.csv`` / ``.tsv`` (pandas; every cell read as a
    string, empty cells as ``""``), ``.parquet`` (pyarrow; list columns become lists), anything
    else as JSON / JSONL (:func:`read_json_records`).

    Raises:
        DataError: unreadable or malformed file; the message names the file.
    """
    path = Path(path)
    suf = path.suffix.lower()
    if suf in (".csv", ".tsv"):
        import pandas as pd

        try:
            df = pd.read_csv(path, sep="\t" if suf == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read as {suf[1:].upper()}: {e}") from None
        return [{str(k): v for k, v in r.items()} for r in df.to_dict(orient="records")]
    if suf == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from e
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None
    return read_json_records(path)


def squad_records(path: Path) -> list[dict[str, Any]]:
    """Flatten the SQuAD explorer file into records {context, question, answers, is_impossible, title}."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read SQuAD file: {e}") from None
    out: list[dict[str, Any]] = []
    for art in raw.get("data", []):
        for para in art.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = qa.get("answers") or []
                texts = [a["text"] if isinstance(a, dict) else str(a) for a in answers]
                out.append({"title": art.get("title"), "context": para.get("context", ""),
                            "question": qa.get("question", ""), "answers": texts,
                            "is_impossible": bool(qa.get("is_impossible", not texts)), "id": qa.get("id")})
    if not out:
        raise DataError(f"{path}: no SQuAD questions found")
    return out


def load_dataset(name: str, data_dir: str | Path | None = None) -> list[dict[str, Any]] | str:
    """Load a catalogue dataset: a list of records, or a str for raw-text datasets.

    Raises:
        KeyError: unknown name (with "did you mean").
        DataError: missing or malformed file.
    """
    info = DATASETS.get(name)
    p = info.path(data_dir)
    if info.fmt == "text":
        try:
            return p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read text: {e}") from None
    if info.fmt == "squad":
        return squad_records(p)
    recs = read_json_records(p)
    if info.fmt == "bio_passages":
        seen: list[str] = []
        for r in recs:
            c = r.get("context")
            if c and c not in seen:
                seen.append(c)
        return "\n\n".join(seen)
    return recs


def count_records(name: str, data_dir: str | Path | None = None) -> str:
    """Human-readable size: record count, or characters for raw text."""
    d = load_dataset(name, data_dir)
    if isinstance(d, str):
        return f"{len(d):,} chars"
    return f"{len(d):,}"


def license_of(name: str, data_dir: str | Path | None = None) -> str:
    """The licence line of the dataset's PROVENANCE.md ('?' when absent)."""
    p = DATASETS.get(name).provenance(data_dir)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError:
        return "?"
    m = re.search(r"^##\s*Licen[sc]e\s*\n+(.+)$", text, flags=re.M)
    if not m:
        return "?"
    line = m.group(1).strip()
    return line[:90] + ("…" if len(line) > 90 else "")
