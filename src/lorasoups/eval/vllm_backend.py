"""Generation with vLLM (optional extra ``vllm``, import-guarded; needs a GPU)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..errors import ConfigError
from ..prompts import IGNORE_INDEX, encode_pair, encode_prompt
from .generate import StopRule, per_prompt_rules, truncate_at_stop


class VLLMGenerator:
    """Generation with vLLM (optional extra: ``pip install lorasoups[vllm]``; needs a GPU).

    Serves ``base`` with the PEFT adapter folder ``adapter`` (LoRA) through ``LoRARequest``, greedy
    (temperature 0), automatic prefix caching on. Likelihoods use vLLM's prompt log-probabilities
    on :func:`lorasoups.prompts.encode_pair` ids.

    Raises:
        ConfigError: vLLM is not installed, or the adapter is an MoE folder (vLLM cannot serve it).
    """

    def __init__(self, base_path: str, tokenizer: Any, adapter: str | None = None, *, max_lora_rank: int = 64,
                 gpu_memory_utilization: float = 0.8, **llm_kw: Any):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("--backend vllm needs the optional vLLM extra (pip install 'lorasoups[vllm]') "
                              "and a GPU; use --backend hf on CPUs") from None

        self.tok = tokenizer
        self.adapter = adapter
        self.llm = LLM(model=base_path, tokenizer=base_path, enable_lora=adapter is not None,
                       max_lora_rank=max_lora_rank, enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization, **llm_kw)
        self._lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, str(adapter))
        self.stats = {"generated_tokens": 0, "generate_s": 0.0}

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 256, stop: Sequence[str] = (),
                 stop_rule: StopRule | Sequence[StopRule] = None) -> list[str]:
        """Greedy completions; stop strings end generation in vLLM, stop rules cut the finished
        texts (the same cut as token by token, see :class:`CannedGenerator`)."""
        from vllm import SamplingParams

        t0 = time.perf_counter()
        sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None,
                            skip_special_tokens=True)
        reqs = [{"prompt_token_ids": encode_prompt(self.tok, p)} for p in prompts]
        res = self.llm.generate(reqs, sp, lora_request=self._lora, use_tqdm=False)
        out = []
        for r, rule in zip(res, per_prompt_rules(stop_rule, len(prompts))):
            o = r.outputs[0]
            self.stats["generated_tokens"] += len(o.token_ids)
            out.append(truncate_at_stop(o.text, stop, rule)[0])
        self.stats["generate_s"] += time.perf_counter() - t0
        return out

    def nll(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        from vllm import SamplingParams

        encs = [encode_pair(self.tok, p, r) for p, r in zip(prompts, responses)]
        sp = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        res = self.llm.generate([{"prompt_token_ids": e["input_ids"]} for e in encs], sp,
                                lora_request=self._lora, use_tqdm=False)
        out = []
        for e, r in zip(encs, res):
            tot, n = 0.0, 0
            for t, (tid, lab) in enumerate(zip(e["input_ids"], e["labels"])):
                if lab == IGNORE_INDEX or t == 0:
                    continue
                lp = r.prompt_logprobs[t][tid].logprob
                tot -= lp
                n += 1
            out.append({"nll": tot / n if n else float("nan"), "sum": tot, "n_tokens": n})
        return out
