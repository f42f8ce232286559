"""Does the prepared Gemma 3 270M tokenizer give llama.cpp's ids on real text?

Compares ``tokenizer(text)["input_ids"]`` of the prepared folder (built by
:func:`lorasoups.models.gguf_spm.build_spm_tokenizer`) with the plain-Python reference of
llama.cpp's SPM rules in ``tests/models/test_gemma.py`` (run over the folder's
``gguf-tokenizer.json``, the GGUF's own arrays), on every string field of the first records of
catalogue files, and checks that decoding gives the text back. Prints the number of texts and
characters, how many differ, and the first few differences::

    python benchmarks/gemma_tokenizer_check.py                # 1,500 + 1,500 + 1,000 records
    python benchmarks/gemma_tokenizer_check.py --records 200
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_reference():
    spec = importlib.util.spec_from_file_location("gemma_reference", ROOT / "tests" / "models" / "test_gemma.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def texts_of(data_dir: Path, records: int) -> list[str]:
    out: list[str] = []
    for rel in ("alpaca_subset/alpaca_5000.json", "codealpaca/code_alpaca_2k.json"):
        for r in json.loads((data_dir / rel).read_text(encoding="utf-8"))[:records]:
            out += [v for v in r.values() if isinstance(v, str) and v]
    with open(data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= records * 2 // 3:
                break
            r = json.loads(line)
            out += [r["question"], r["answer"]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1500, help="records per JSON file (GSM8K: two thirds of it)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from lorasoups.models import prepare_model
    from lorasoups.models.gemma import GGUF_TOKENIZER_FILE
    from lorasoups.paths import find_data_dir

    folder = prepare_model("gemma3-270m")
    ref_mod = load_reference()
    ref = ref_mod.ref_encoder(json.loads((folder / GGUF_TOKENIZER_FILE).read_text(encoding="utf-8")))
    tok = AutoTokenizer.from_pretrained(str(folder))
    texts = list(ref_mod.STRINGS) + texts_of(find_data_dir(args.data_dir), args.records)
    t0 = time.perf_counter()
    diff = bad_decode = 0
    for s in texts:
        ids = tok(s)["input_ids"]
        if ids != ref(s):
            diff += 1
            if diff <= 3:
                print("differs:", repr(s[:120]))
        if "<" not in s and tok.decode(ids, skip_special_tokens=True) != s:
            bad_decode += 1
    print(f"{len(texts)} texts, {sum(map(len, texts)):,} characters: {diff} tokenise differently from the "
          f"reference, {bad_decode} do not decode back ({time.perf_counter() - t0:.0f} s)")
    return 1 if diff or bad_decode else 0


if __name__ == "__main__":
    raise SystemExit(main())
