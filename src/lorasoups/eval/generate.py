"""Generation and teacher-forced likelihoods.

:class:`HFGenerator` (transformers, CPU or GPU):

* greedy decoding (deterministic: ``argmax``; no sampling), batched, with a KV cache;
* **prefix caching**: the token prefix shared by every prompt of a call (the chat template's system
  turn and the few-shot demos) is run once and its keys/values are reused. Each prompt's remaining
  tokens are left-padded *after* the prefix — ``[prefix][pad..][suffix]`` — with an attention mask
  that hides the pads and position ids that continue from the prefix, so every row sees exactly
  the positions of its unpadded prompt. Two ways to reuse the prefix:

  - ``shared`` (default where the model's attention dispatches through transformers'
    ``AttentionInterface``): a registered attention function attends to the prefix keys/values
    held *once* (batch 1) and to each row's own keys/values in the ordinary ``DynamicCache``,
    with one softmax over both parts. The prefix is never replicated per row, which matters on
    CPUs where decoding is memory-bound;
  - ``copy`` (fallback): the prefix keys/values are copied into each batch's ``DynamicCache``
    (``DynamicCache(ddp_cache_data=...)`` concatenates them into fresh tensors, so the stored
    prefix is never modified). With ``prefix_mode="auto"``, :meth:`HFGenerator.nll` always uses
    this way: whole suffixes are scored at once, and SDPA's fused kernel beats the shared path's
    materialised scores there (1.86x measured), while decoding keeps the shared prefix;
* finished rows (end-of-turn token, a stop string, the prompt's stop rule, the token budget) leave the
  batch (``Cache.batch_select_indices``), so long completions do not carry short ones;
* bf16 autocast on CPUs with AVX512-BF16 / AMX (``/proc/cpuinfo``) unless disabled; the output
  projection runs in fp32 on the positions actually used (the next token; the scored answer
  tokens), so bf16 rounding of logits neither flips greedy choices nor blurs likelihoods. One autocast
  region (under ``torch.no_grad``) spans a whole call, so autocast's cache of bf16 weight copies
  is filled once instead of re-casting every weight at every decoding step.

Prompts are tokenised by :func:`lorasoups.prompts.encode_prompt` (the tokenizer's start tokens,
e.g. BOS, exactly once), as :func:`lorasoups.prompts.encode_pair` does for training, and
:meth:`HFGenerator.nll` computes the gold response's likelihood from ``encode_pair`` ids
(end-of-turn token included, prompt tokens masked), so training, generation and likelihoods see
the same token sequences.

:class:`lorasoups.eval.vllm_backend.VLLMGenerator` (optional extra ``vllm``, import-guarded) serves a base model and a PEFT
adapter folder with vLLM for users with a GPU.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
from typing import Any, Callable, Protocol, Sequence, Union

from ..errors import ConfigError, ModelError
from ..prompts import IGNORE_INDEX, encode_pair, encode_prompt
from .prefix_cache import ACTIVE_PREFIX, cache_kv, enable_shared_prefix, make_cache, select_rows


StopRule = Union[str, Callable[[str], Union[int, None]], None]
"""When a completion is complete: a regex (the completion ends after its first match), a callable
``text -> end offset | None`` (the completion ends at the offset it returns, e.g.
:class:`lorasoups.eval.codeblocks.StopAfterDefinition`), or None (no rule)."""


class Generator(Protocol):
    """What the runner needs from a backend. ``stop_rule`` is one :data:`StopRule` for every
    prompt or a sequence with one per prompt."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
                 stop_rule: StopRule | Sequence[StopRule] = None) -> list[str]: ...

    def nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]: ...


def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 dot products (:func:`lorasoups.devices.native_bf16`)."""
    from ..devices import native_bf16

    return native_bf16("cpu", cpuinfo)


def truncate_at_stop(text: str, stop: Sequence[str] = (), stop_rule: StopRule = None) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string, or where ``stop_rule`` ends it (after the first
    match of a regex; at the offset a callable returns), whichever comes first.

    Returns ``(text, stopped)``.
    """
    cut = None
    for s in stop:
        if s:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
    end = None
    if callable(stop_rule):
        end = stop_rule(text)
    elif stop_rule:
        m = re.search(stop_rule, text)
        end = m.end() if m else None
    if end is not None and (cut is None or end < cut):
        cut = end
    if cut is None:
        return text, False
    return text[:cut], True


def per_prompt_rules(stop_rule: StopRule | Sequence[StopRule], n: int) -> list[StopRule]:
    """One stop rule per prompt: ``stop_rule`` repeated, or checked to have ``n`` entries.

    Raises:
        ValueError: a sequence of rules whose length is not ``n``.
    """
    if stop_rule is None or isinstance(stop_rule, str) or callable(stop_rule):
        return [stop_rule] * n
    rules = list(stop_rule)
    if len(rules) != n:
        raise ValueError(f"{len(rules)} stop rules for {n} prompts; give one rule or one per prompt")
    return rules


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences, capped so that every sequence keeps
    at least one token after it (the last prompt token must be run to predict the next)."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return max(0, k)


class CannedGenerator:
    """A fake backend for tests: returns canned completions (no model).

    Args:
        completions: a list (returned in call order, cycling per call) or a dict prompt-substring
            -> completion (the first key found in the prompt wins), or a callable prompt -> text.
        apply_stops: cut each canned text with the call's stop strings and stop rules, as a model
            that would have written the whole text stops (:func:`truncate_at_stop`; a rule gives
            the same cut on a finished text as token by token).
    """

    def __init__(self, completions: Any, apply_stops: bool = False):
        self.completions = completions
        self.apply_stops = apply_stops
        self.calls: list[list[str]] = []
        self.stop_rules: list[list[StopRule]] = []
        self.stats: dict[str, float] = {}

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 0, stop: Sequence[str] = (),
                 stop_rule: StopRule | Sequence[StopRule] = None) -> list[str]:
        self.calls.append(list(prompts))
        rules = per_prompt_rules(stop_rule, len(prompts))
        self.stop_rules.append(rules)
        out = self._canned(prompts)
        if self.apply_stops:
            out = [truncate_at_stop(t, stop, r)[0] for t, r in zip(out, rules)]
        return out

    def _canned(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for i, p in enumerate(prompts):
            c = self.completions
            if callable(c):
                out.append(c(p))
            elif isinstance(c, dict):
                out.append(next((v for k, v in c.items() if k in p), ""))
            else:
                out.append(c[i % len(c)])
        return out

    def nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        raise NotImplementedError("CannedGenerator has no likelihoods; pass likelihood=False")


class HFGenerator:
    """Batched greedy generation with prefix caching, and teacher-forced likelihoods.

    Args:
        model: a causal LM (plain, PEFT-wrapped or MoE-wrapped), eval mode.
        tokenizer: its tokenizer.
        batch_size: rows per forward pass.
        prefix_cache: reuse the KV cache of the prompts' common token prefix.
        prefix_mode: ``auto`` (``shared`` where supported, else ``copy``), ``shared`` or ``copy``
            (see the module docstring).
        bf16: autocast to bf16 (default: on CPU when :func:`cpu_supports_bf16`, on CUDA when
            ``torch.cuda.is_bf16_supported()``).
    """

    on_batch: Any = None  # progress hook: called with the number of rows finished after each batch

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, prefix_cache: bool = True,
                 bf16: bool | None = None, prefix_mode: str = "auto"):
        import torch

        self.model, self.tok = model, tokenizer
        self.batch_size = max(1, int(batch_size))
        self.prefix_cache = prefix_cache
        if prefix_mode not in ("auto", "shared", "copy"):
            raise ConfigError(f"prefix_mode must be auto, shared or copy, got {prefix_mode!r}")
        self.prefix_mode = "off"
        # Teacher-forced scoring runs whole suffixes (many query positions): the prefix copied into
        # the cache lets SDPA's fused kernel do the attention, 1.86x the shared path's materialised
        # (rows, prefix + suffix) scores on the gsm_hard likelihood benchmark (17.3 s vs 32.1 s,
        # 80 pairs, 2 cores). Decoding (one query position) stays faster shared (18.3 s vs 21.7 s).
        self._nll_mode = "copy" if prefix_mode == "auto" else prefix_mode
        if prefix_cache:
            shared = prefix_mode in ("auto", "shared") and enable_shared_prefix(model)
            if prefix_mode == "shared" and not shared:
                raise ConfigError("prefix_mode='shared' needs a model whose attention runs through "
                                  "transformers' SDPA AttentionInterface; use prefix_mode='copy'")
            self.prefix_mode = "shared" if shared else "copy"
        p = next(model.parameters())
        self.device = p.device
        if bf16 is None:
            bf16 = ((self.device.type == "cuda" and torch.cuda.is_bf16_supported())
                    or (self.device.type == "cpu" and cpu_supports_bf16()))
        self.bf16 = bool(bf16) and p.dtype == torch.float32
        if self.bf16:
            # autocast caches bf16 copies only of weights with requires_grad (PEFT freezes the base
            # model's); without the cache every weight is re-cast at every decoding step. No
            # gradients are ever computed here (all calls run under torch.no_grad).
            for q in model.parameters():
                if q.is_floating_point() and not q.requires_grad:
                    q.requires_grad_(True)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else (
            "num_logits_to_keep" if "num_logits_to_keep" in params else None)
        self.config = getattr(base, "config", None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.eos_ids = self._eos_ids()
        self._prefix_memo: tuple[tuple[int, ...], Any] | None = None
        self._head32: tuple[Any, Any] | None = None
        self.stats = {"generated_tokens": 0, "generate_s": 0.0, "prompt_tokens": 0, "prefix_tokens_reused": 0,
                      "nll_s": 0.0}

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for t in (self.tok.eos_token_id,):
            if t is not None:
                ids.add(int(t))
        gc = getattr(self.model, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
        for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tok.convert_tokens_to_ids(name) if name in self.tok.get_vocab() else None
            if tid is not None:
                ids.add(int(tid))
        return ids

    def _plain_head(self) -> Any:
        """The output projection when it is a plain ``nn.Linear`` (else None)."""
        import torch

        get = getattr(self.model, "get_output_embeddings", None)
        head = get() if get is not None else None
        return head if type(head) is torch.nn.Linear else None

    @contextlib.contextmanager
    def _hidden_states_out(self, head: Any):
        """While active, the model returns final hidden states in place of logits (the output
        projection is applied afterwards, in fp32, only at the positions that are scored)."""
        if head is None:
            yield
            return
        head.forward = lambda x: x  # instance attribute shadows nn.Linear.forward
        try:
            yield
        finally:
            del head.forward

    @contextlib.contextmanager
    def _session(self):
        """``no_grad`` + one bf16 autocast region for a whole call (autocast caches the bf16
        copies of the weights within a region; ``inference_mode`` would disable that cache)."""
        import torch

        with torch.no_grad():
            if self.bf16:
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                    yield
            else:
                yield

    def encode(self, prompt: str) -> list[int]:
        """Prompt token ids, as :func:`lorasoups.prompts.encode_pair` tokenises a prompt."""
        return encode_prompt(self.tok, prompt)

    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any, last_only: bool, shared_kv: Any = None):
        """One forward pass; ``shared_kv`` activates :func:`lorasoups.eval.prefix_cache.prefix_attention` for its duration."""
        kw: dict[str, Any] = {self._cache_kw: cache}
        if last_only and self._keep_kw:
            kw[self._keep_kw] = 1
        token = ACTIVE_PREFIX.set(shared_kv)
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
        finally:
            ACTIVE_PREFIX.reset(token)
        new_cache = out.get("cache") if "cache" in out else None
        if new_cache is None:
            new_cache = out.get("past_key_values")
        return out.logits, new_cache

    def _prefix_kv(self, prefix: Sequence[int]) -> list[tuple[Any, Any]]:
        """Per-layer keys/values ``(1, Hkv, P, d)`` of the shared prefix, computed once per
        distinct prefix (the last one is memoised)."""
        import torch

        key = tuple(prefix)
        if self._prefix_memo is not None and self._prefix_memo[0] == key:
            return self._prefix_memo[1]
        self._prefix_memo = None
        ids = torch.tensor([list(prefix)], device=self.device)
        mask = torch.ones_like(ids)
        pos = torch.arange(len(prefix), device=self.device)[None]
        _, cache = self._forward(ids, mask, pos, None, last_only=True)
        kv = [(k.detach(), v.detach()) for k, v in cache_kv(cache)]
        self._prefix_memo = (key, kv)
        return kv

    def _batch_inputs(self, suffixes: Sequence[Sequence[int]], P: int, include_prefix_in_mask: bool):
        """Left-pad suffixes that follow a prefix of length ``P``.

        Returns ``ids (B, Ls)``, ``mask`` (``(B, P+Ls)`` with the prefix columns, or ``(B, Ls)``
        for the shared mode where the prefix is outside the cache), ``pos (B, Ls)`` (positions
        continue from the prefix; pads get any valid position, they are masked), ``offsets``
        (pads per row).
        """
        import torch

        B, L = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        smask = torch.zeros((B, L), dtype=torch.long)
        offsets = []
        for b, s in enumerate(suffixes):
            o = L - len(s)
            offsets.append(o)
            ids[b, o:] = torch.tensor(list(s), dtype=torch.long)
            smask[b, o:] = 1
        pos = (P + smask.cumsum(1) - 1).clamp(min=0)  # (B, L)
        mask = torch.cat([torch.ones((B, P), dtype=torch.long), smask], 1) if include_prefix_in_mask else smask
        return ids.to(self.device), mask.to(self.device), pos.to(self.device), offsets

    def _start(self, suffixes: Sequence[Sequence[int]], P: int, kv: Any, last_only: bool, mode: str | None = None):
        """Run the suffixes after the prefix (``mode``: ``shared`` or ``copy``, default
        ``self.prefix_mode``). Returns ``(logits, cache, mask, pos, offsets, shared)``."""
        shared = kv if (kv is not None and (mode or self.prefix_mode) == "shared") else None
        ids, mask, pos, offs = self._batch_inputs(suffixes, P, include_prefix_in_mask=shared is None)
        cache = make_cache(kv, self.config, len(suffixes)) if (kv is not None and shared is None) else None
        logits, cache = self._forward(ids, mask, pos, cache, last_only=last_only, shared_kv=shared)
        return logits, cache, mask, pos, offs, shared

    def _prefix_len(self, seqs: Sequence[Sequence[int]]) -> int:
        return common_prefix_len(seqs) if (self.prefix_mode != "off" and len(seqs) > 1) else 0

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
                 stop_rule: StopRule | Sequence[StopRule] = None) -> list[str]:
        """Greedy completions of ``prompts`` (text after the prompt, special tokens removed,
        cut at the first stop string or where the prompt's stop rule ends it; ``stop_rule``: one
        :data:`StopRule` or one per prompt). A row stops as soon as its decoded text is cut."""
        t0 = time.perf_counter()
        enc = [self.encode(p) for p in prompts]
        if not enc:
            return []
        rules = per_prompt_rules(stop_rule, len(enc))
        out: list[str | None] = [None] * len(enc)
        head = self._plain_head()
        self._head32 = None if head is None else (head.weight.detach().float(),
                                                  None if head.bias is None else head.bias.detach().float())
        with self._session(), self._hidden_states_out(head):
            P = self._prefix_len(enc)
            kv = self._prefix_kv(enc[0][:P]) if P > 0 else None
            order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                texts = self._generate_batch([enc[i][P:] for i in idx], P, kv, max_new_tokens, stop,
                                             [rules[i] for i in idx])
                for i, t in zip(idx, texts):
                    out[i] = t
                if self.on_batch is not None:
                    self.on_batch(len(idx))
        self._head32 = None
        self.stats["prompt_tokens"] += sum(len(e) for e in enc)
        self.stats["prefix_tokens_reused"] += P * (len(enc) - 1) if P else 0
        self.stats["generate_s"] += time.perf_counter() - t0
        return [o or "" for o in out]

    def _next_tokens(self, out_last: Any) -> Any:
        """Greedy next tokens ``(B,)`` from the last position's logits, or from its hidden states
        through the output projection in fp32 (then bf16 rounding of logits cannot flip the argmax)."""
        import torch

        if self._head32 is None:
            return out_last.float().argmax(-1)
        w, b = self._head32
        with torch.autocast(device_type=self.device.type, enabled=False):
            return torch.nn.functional.linear(out_last.float(), w, b).argmax(-1)  # (B, V) -> (B,)

    def _generate_batch(self, suffixes: Sequence[Sequence[int]], P: int, kv: Any, max_new: int,
                        stop: Sequence[str], rules: Sequence[StopRule]) -> list[str]:
        import torch

        B = len(suffixes)
        logits, cache, mask, pos, _, shared = self._start(suffixes, P, kv, last_only=True)
        nxt = self._next_tokens(logits[:, -1])  # (B,)
        last_pos = pos[:, -1]
        rows = list(range(B))  # original row of each live batch slot
        gen: list[list[int]] = [[] for _ in range(B)]
        texts = [""] * B
        for _ in range(max_new):
            keep = []
            toks = nxt.tolist()
            for j, b in enumerate(rows):
                t = int(toks[j])
                self.stats["generated_tokens"] += 1
                if t in self.eos_ids:
                    continue
                gen[b].append(t)
                text = self.tok.decode(gen[b], skip_special_tokens=True)
                cut, stopped = truncate_at_stop(text, stop, rules[b])
                texts[b] = cut
                if stopped or len(gen[b]) >= max_new:
                    continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):
                sel = torch.tensor(keep, device=self.device)
                select_rows(cache, sel)
                mask, last_pos, nxt = mask[sel], last_pos[sel], nxt[sel]
                rows = [rows[j] for j in keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], 1)
            last_pos = last_pos + 1
            logits, cache = self._forward(nxt[:, None], mask, last_pos[:, None], cache, last_only=True, shared_kv=shared)
            nxt = self._next_tokens(logits[:, -1])
        return texts

    # ---- likelihood --------------------------------------------------------------------------
    def nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        """Teacher-forced negative log-likelihood of each response after its prompt.

        Token ids are :func:`lorasoups.prompts.encode_pair` ids (response + end-of-turn token;
        prompt tokens masked). The output projection and the log-softmax run in fp32 at the
        scored positions only (even under bf16 autocast). Returns per pair ``{"nll": mean over response tokens (nats/token),
        "sum": total nats, "n_tokens": int}``.
        """
        import torch

        t0 = time.perf_counter()
        encs = [encode_pair(self.tok, p, r, where=f"likelihood item {i}") for i, (p, r) in enumerate(zip(prompts, responses))]
        if not encs:
            return []
        n_prompt = [sum(1 for x in e["labels"] if x == IGNORE_INDEX) for e in encs]
        out: list[dict[str, float] | None] = [None] * len(encs)
        head = self._plain_head()
        w32 = b32 = None
        if head is not None:
            w32 = head.weight.detach().float()  # (V, H)
            b32 = None if head.bias is None else head.bias.detach().float()
        with self._session(), self._hidden_states_out(head):
            # shared prefix within the prompts, keeping >= 1 prompt token per row after it
            P = self._prefix_len([e["input_ids"][:n] for e, n in zip(encs, n_prompt)])
            kv = self._prefix_kv(encs[0]["input_ids"][:P]) if P > 0 else None
            order = sorted(range(len(encs)), key=lambda i: -len(encs[i]["input_ids"]))
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                labs = [encs[i]["labels"][P:] for i in idx]
                logits, _, _, _, offs, _ = self._start([encs[i]["input_ids"][P:] for i in idx], P, kv, last_only=False,
                                                       mode=self._nll_mode)
                for b, i in enumerate(idx):  # logits (B, Ls, V)
                    lab = labs[b]
                    tpos = [t for t in range(1, len(lab)) if lab[t] != IGNORE_INDEX]  # predicted tokens
                    if not tpos:
                        out[i] = {"nll": float("nan"), "sum": 0.0, "n_tokens": 0}
                        continue
                    rows = torch.tensor([offs[b] + t - 1 for t in tpos], device=logits.device)
                    tgt = torch.tensor([lab[t] for t in tpos], device=logits.device)
                    sel = logits[b, rows]  # (n, V) logits, or (n, H) hidden states
                    if w32 is not None:
                        with torch.autocast(device_type=self.device.type, enabled=False):
                            sel = torch.nn.functional.linear(sel.float(), w32, b32)  # (n, V), fp32
                    lp = torch.log_softmax(sel.float(), -1).gather(1, tgt[:, None])[:, 0]
                    tot = float(-lp.sum())
                    out[i] = {"nll": tot / len(tpos), "sum": tot, "n_tokens": len(tpos)}
                del logits
                if self.on_batch is not None:
                    self.on_batch(len(idx))
        self.stats["nll_s"] += time.perf_counter() - t0
        return [o for o in out if o is not None]


__all__ = ["Generator", "HFGenerator", "CannedGenerator", "cpu_supports_bf16",
           "truncate_at_stop", "per_prompt_rules", "StopRule", "common_prefix_len", "ModelError"]
