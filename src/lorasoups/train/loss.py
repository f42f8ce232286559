"""One memory-lean causal-LM loss for every trainer (skill LoRAs, CAT, MoE routers, LoRA Hub).

The output head is applied only at positions whose next token is scored (label != -100), and the
fp32 cross-entropy runs over chunks of those positions; with gradients, each chunk is checkpointed
so its (chunk, vocab) logits are freed after the forward and recomputed in the backward. A full
(batch, seq, vocab) logits tensor therefore never exists. The value equals the model's own loss
(``model(..., labels=labels).loss``: mean next-token cross-entropy over label tokens, in nats).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
DEFAULT_CHUNK = 1024  # scored positions per head + cross-entropy chunk: 1024 × 49152 fp32 = 192 MiB
LOGITS_BUDGET = 1024 * 49152  # fp32 logits per chunk (192 MiB): large vocabularies get fewer rows per chunk


def _plain_head(model: nn.Module):
    """(decoder, head) when logits are exactly ``head(decoder(...).last_hidden_state)``, else None."""
    if not (hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings")):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    cfg = getattr(model, "config", None)
    if decoder is None or type(head) is not nn.Linear or cfg is None:
        return None
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return None
    if float(getattr(cfg, "logit_scale", 1.0) or 1.0) != 1.0:
        return None
    return decoder, head


def _chunk_ce_sum(head: nn.Linear, h: torch.Tensor, tgt: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Summed fp32 cross-entropy of ``head(h)`` (rows, vocab) against ``tgt`` (rows,); with ``w``
    (rows,) fp32 the sum of ``w`` times each row's cross-entropy."""
    if w is None:
        return F.cross_entropy(head(h).float(), tgt, reduction="sum")
    return (F.cross_entropy(head(h).float(), tgt, reduction="none") * w).sum()


def lm_loss_sum(model: nn.Module, batch: dict, chunk: int = DEFAULT_CHUNK,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy (nats) over the label tokens of a batch, and their count.

    Args:
        model: a causal LM (transformers ``*ForCausalLM``, possibly PEFT-wrapped). When its logits are
            a plain ``nn.Linear`` head over the decoder's last hidden state, the head runs only at
            scored positions, ``chunk`` rows at a time; otherwise the model's full logits are used.
        batch: ``input_ids`` (b, T) long, optional ``attention_mask`` (b, T), ``labels`` (b, T) long
            with -100 where a token is not scored (prompt, padding). Label t is predicted at t-1.
        chunk: scored positions per head + cross-entropy chunk (bounds the fp32 logits memory); at most
            ``LOGITS_BUDGET // vocab`` (192 MiB of fp32 logits: 1,024 rows for SmolLM2, 192 for Gemma 3).
        weights: optional (b,) fp32 weight of each row's tokens: the sum becomes
            Σ_rows w_row Σ_tokens CE (a weighted objective, e.g. CAT's ``mix=balanced``); n is
            still the plain token count. None: the unweighted sum (same code path as before).

    Returns:
        (loss sum as a 0-d fp32 tensor, number of scored tokens n). Divide by n for the mean, which
        is the Hugging Face ``model(..., labels=...).loss`` of the same batch.
    """
    ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
    tgt = labels[:, 1:].to(ids.device)       # (b, T-1) targets for positions 0..T-2
    sel = tgt != IGNORE_INDEX                 # (b, T-1)
    n = int(sel.sum())
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=ids.device), 0
    # per scored token: the weight of its row, (n,) fp32
    w = None if weights is None else weights.to(device=ids.device, dtype=torch.float32)[:, None].expand_as(sel)[sel]
    parts = _plain_head(model)
    if parts is None:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][sel]   # (n, vocab)
        return _chunk_ce_sum(nn.Identity(), logits, tgt[sel], w), n
    decoder, head = parts
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state       # (b, T, d)
    h = hidden[:, :-1][sel]                                                      # (n, d)
    t = tgt[sel]                                                                 # (n,)
    del hidden
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    chunk = max(1, min(chunk, LOGITS_BUDGET // max(1, vocab)))  # Gemma 3 (262,144 tokens): 192 rows
    total = None
    for i in range(0, n, chunk):
        hc, tc = h[i:i + chunk], t[i:i + chunk]
        wc = None if w is None else w[i:i + chunk]
        if grad and n > chunk:
            s = torch.utils.checkpoint.checkpoint(_chunk_ce_sum, head, hc, tc, wc, use_reentrant=False)
        else:
            s = _chunk_ce_sum(head, hc, tc, wc)
        total = s if total is None else total + s
    return total, n


def lm_loss(model: nn.Module, batch: dict, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token) over label tokens; see :func:`lm_loss_sum`.

    Raises:
        ValueError: the batch has no scored token.
    """
    s, n = lm_loss_sum(model, batch, chunk)
    if n == 0:
        raise ValueError("lm_loss: the batch has no label token (all labels are -100)")
    return s / n
