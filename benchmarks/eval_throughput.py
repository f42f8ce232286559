"""Generation throughput: the reference harness's way vs lorasoups' evaluation path.

Reference: one prompt at a time, the full few-shot prompt run for every prompt, greedy
``model.generate`` (KV cache within each generation, no prefix caching).
Ours: :class:`lorasoups.eval.generate.HFGenerator` — batched greedy decoding with the shared
few-shot prefix computed once (prefix caching), finished rows leaving the batch.

Both run on the same prompts (the task's first ``--limit`` items with its default few-shot demos),
in the same process, with the same dtype policy (bf16 autocast where the CPU supports it) and the
same token budget. Printed: generated tokens, wall and CPU seconds, tokens/s, and the ratio.
Timed side by side; on a shared machine compare the ratios, not absolute numbers.

    python benchmarks/eval_throughput.py --limit 50            # SmolLM2-135M, multiarith
    python benchmarks/eval_throughput.py --limit 8 --max-new-tokens 64   # quick

Likelihood mode (``--mode likelihood``): teacher-forced scoring of each item's gold response and
its control (another item's gold, as ``nll_gold`` / ``nll_control`` are computed), our
:meth:`HFGenerator.nll` (batched, shared few-shot prefix KV computed once, output projection only
at the scored positions) vs a plain full-sequence forward per pair (prompt + response, full
``(1, L, V)`` logits, log-softmax). Both count the same scored response tokens; printed side by
side with the largest NLL difference between the two paths.

    python benchmarks/eval_throughput.py --mode likelihood --task gsm_hard --limit 40
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="generate", choices=["generate", "likelihood"])
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--task", default=None, help="default: multiarith (generate), gsm_hard (likelihood)")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--prefix-mode", default="auto", choices=["auto", "shared", "copy"])
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast for either path")
    ap.add_argument("--also-ours-batch1", action="store_true",
                    help="also time our path with batch 1 and no prefix caching")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from lorasoups.eval.generate import HFGenerator, cpu_supports_bf16
    from lorasoups.eval.registry import get_task
    from lorasoups.models import load_base

    model, tok = load_base(args.base)
    args.task = args.task or ("gsm_hard" if args.mode == "likelihood" else "multiarith")
    task = get_task(args.task)
    if args.mode == "likelihood":
        return likelihood_mode(args, model, tok, task)
    items = task.load_items(limit=args.limit)
    demos = task.load_demos(shots=args.shots)
    prompts = [task.render(tok, it, demos) for it in items]
    n_prompt = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    bf16 = (not args.fp32) and cpu_supports_bf16()
    print(f"base={args.base} task={args.task} prompts={len(prompts)} shots={len(demos)} "
          f"prompt tokens mean={sum(n_prompt) / len(n_prompt):.0f} max_new_tokens={args.max_new_tokens} "
          f"bf16_autocast={bf16} threads={args.threads}")

    rows = []

    # -- reference: batch 1, full prompt each time, HF generate ----------------------------------
    gen_ids = []
    eos = [tok.eos_token_id] + ([tok.convert_tokens_to_ids("<|im_end|>")] if "<|im_end|>" in tok.get_vocab() else [])
    t0, c0 = time.perf_counter(), time.process_time()
    ref_tokens = 0
    ref_texts = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i, p in enumerate(prompts):
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
            new = out[0, ids.shape[1]:]
            ref_tokens += int(new.numel())
            gen_ids.append(new)
            ref_texts.append(tok.decode(new, skip_special_tokens=True))
            if (i + 1) % 10 == 0:
                print(f"  reference: {i + 1}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    rows.append(("reference: batch 1, no prefix cache (HF generate)", ref_tokens, time.perf_counter() - t0,
                 time.process_time() - c0))

    if args.also_ours_batch1:
        g1 = HFGenerator(model, tok, batch_size=1, prefix_cache=False, bf16=bf16)
        t0, c0 = time.perf_counter(), time.process_time()
        g1.generate(prompts, args.max_new_tokens)
        rows.append(("ours: batch 1, no prefix cache", g1.stats["generated_tokens"], time.perf_counter() - t0,
                     time.process_time() - c0))

    g = HFGenerator(model, tok, batch_size=args.batch_size, prefix_cache=True, bf16=bf16, prefix_mode=args.prefix_mode)
    t0, c0 = time.perf_counter(), time.process_time()
    texts = g.generate(prompts, args.max_new_tokens)
    rows.append((f"ours: batch {args.batch_size}, prefix cache ({g.prefix_mode})", g.stats["generated_tokens"],
                 time.perf_counter() - t0, time.process_time() - c0))

    print(f"\n{'path':<52} {'tokens':>7} {'wall s':>8} {'cpu s':>8} {'tok/s wall':>11} {'tok/s cpu':>10}")
    for name, n, w, c in rows:
        print(f"{name:<52} {n:>7} {w:>8.1f} {c:>8.1f} {n / w:>11.1f} {n / c:>10.1f}")
    ref, ours = rows[0], rows[-1]
    print(f"\nspeed-up of ours over the reference (tokens/s): wall {(ours[1] / ours[2]) / (ref[1] / ref[2]):.1f}x, "
          f"cpu {(ours[1] / ours[3]) / (ref[1] / ref[3]):.1f}x; prefix tokens reused: {g.stats['prefix_tokens_reused']}")
    same = sum(a == b for a, b in zip(ref_texts, texts))
    print(f"identical completions (reference vs ours, greedy; bf16 batching can flip near-ties): {same}/{len(texts)}")
    return 0


def likelihood_mode(args, model, tok, task) -> int:
    """Teacher-forced scoring: ours vs a plain full-sequence forward per (prompt, response) pair."""
    import torch

    from lorasoups.eval.generate import HFGenerator, cpu_supports_bf16
    from lorasoups.eval.likelihood import derangement
    from lorasoups.prompts import IGNORE_INDEX, encode_pair

    items = [it for it in task.load_items(limit=args.limit) if it.gold_text is not None]
    demos = task.load_demos(shots=args.shots)
    prompts = [task.render(tok, it, demos) for it in items]
    ctrl = derangement([it.gold_text for it in items])
    pairs = [(p, it.gold_text) for p, it in zip(prompts, items)]
    pairs += [(p, items[c].gold_text) for p, c in zip(prompts, ctrl) if c is not None]
    encs = [encode_pair(tok, p, r) for p, r in pairs]
    n_scored = sum(sum(1 for x in e["labels"][1:] if x != IGNORE_INDEX) for e in encs)
    n_all = sum(len(e["input_ids"]) for e in encs)
    bf16 = (not args.fp32) and cpu_supports_bf16()
    print(f"likelihood: base={args.base} task={args.task} pairs={len(pairs)} (gold + control) shots={len(demos)} "
          f"tokens per pair mean={n_all / len(encs):.0f} scored (response) tokens={n_scored} "
          f"bf16_autocast={bf16} threads={args.threads}")

    rows = []
    ref_nll = []
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for e in encs:
            ids = torch.tensor([e["input_ids"]])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()  # (L, V)
            lab = torch.tensor(e["labels"][1:])
            keep = lab != IGNORE_INDEX
            lp = torch.log_softmax(logits[:-1][keep], -1).gather(1, lab[keep][:, None])[:, 0]
            ref_nll.append(float(-lp.mean()))
    rows.append(("reference: full forward per pair, full logits", n_scored, time.perf_counter() - t0,
                 time.process_time() - c0))

    g = HFGenerator(model, tok, batch_size=args.batch_size, prefix_cache=True, bf16=bf16, prefix_mode=args.prefix_mode)
    t0, c0 = time.perf_counter(), time.process_time()
    res = g.nll([p for p, _ in pairs], [r for _, r in pairs])
    rows.append((f"ours: HFGenerator.nll batch {args.batch_size}, prefix KV", sum(r["n_tokens"] for r in res),
                 time.perf_counter() - t0, time.process_time() - c0))

    print(f"\n{'path':<52} {'tokens':>7} {'wall s':>8} {'cpu s':>8} {'tok/s wall':>11} {'tok/s cpu':>10}")
    for name, n, w, c in rows:
        print(f"{name:<52} {n:>7} {w:>8.1f} {c:>8.1f} {n / w:>11.1f} {n / c:>10.1f}")
    ref, ours = rows
    diff = max(abs(a - b["nll"]) for a, b in zip(ref_nll, res))
    print(f"\nspeed-up of ours over the reference (scored tokens/s): wall {(ours[1] / ours[2]) / (ref[1] / ref[2]):.1f}x, "
          f"cpu {(ours[1] / ours[3]) / (ref[1] / ref[3]):.1f}x (target >= 3x); "
          f"max |NLL difference| per pair: {diff:.4f} nats/token (bf16 autocast and batching move roundings)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
