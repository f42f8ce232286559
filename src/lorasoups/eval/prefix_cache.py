"""Shared-prefix attention for :class:`lorasoups.eval.generate.HFGenerator`: the prompt prefix
common to a batch (system turn, few-shot demos) is held once and attended to by every row, and the
transformers cache helpers the generator uses (per-layer keys/values, a fresh copied cache,
dropping finished rows)."""

from __future__ import annotations

import contextvars
from typing import Any

# ---- shared-prefix attention -----------------------------------------------------------------
PREFIX_ATTN = "lorasoups_prefix"
ACTIVE_PREFIX: contextvars.ContextVar[Any] = contextvars.ContextVar("lorasoups_active_prefix", default=None)
_REGISTERED = {"done": False, "ok": False}


def prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """Attention over a shared prefix (held once) plus each row's own keys/values.

    Falls back to transformers' SDPA attention when no prefix is active.

    Shapes: ``query (B, Hq, q, d)``; ``key``/``value`` (this batch's rows, from the cache)
    ``(B, Hkv, T, d)``; active prefix per layer ``(1, Hkv, P, d)``; ``attention_mask`` the rows'
    boolean mask ``(B, 1, q, T)`` (True = attend) or None (plain causal). Query head ``h`` uses
    key/value head ``h // (Hq / Hkv)`` (grouped-query attention). Softmax in fp32 over the
    concatenated ``[prefix | rows]`` scores (every prefix position is visible to every row).

    Returns ``(attn_output (B, q, Hq, d), None)`` as transformers' attention functions do.
    """
    import torch

    kv = ACTIVE_PREFIX.get()
    if kv is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kp, vp = kv[module.layer_idx]
    B, Hq, q, d = query.shape
    Hkv, T, P = key.shape[1], key.shape[2], kp.shape[2]
    G = Hq // Hkv
    M = G * q
    scale = scaling if scaling is not None else d ** -0.5
    qg = query.reshape(B, Hkv, M, d)  # (B, Hkv, G*q, d): heads of one kv group, then positions
    qf = qg.transpose(0, 1).reshape(Hkv, B * M, d)  # (Hkv, B*G*q, d): prefix read once per layer
    s_p = torch.bmm(qf, kp[0].transpose(1, 2).to(qf.dtype)).view(Hkv, B, M, P).transpose(0, 1)  # (B, Hkv, M, P)
    s_r = torch.matmul(qg, key.transpose(-1, -2).to(qg.dtype))  # (B, Hkv, M, T)
    if attention_mask is not None:
        am = attention_mask[..., -T:]
        allowed = am if am.dtype == torch.bool else (am == 0)
        allowed = allowed.expand(B, 1, q, T)
    elif q > 1:
        i = torch.arange(q, device=query.device)[:, None]
        j = torch.arange(T, device=query.device)[None, :]
        allowed = (j <= i + (T - q))[None, None].expand(B, 1, q, T)
    else:
        allowed = None
    s = torch.cat([s_p, s_r], -1).float() * scale  # (B, Hkv, M, P+T)
    if allowed is not None:
        rows_ok = allowed[:, :, None].expand(B, 1, G, q, T).reshape(B, 1, M, T)
        full_ok = torch.cat([torch.ones((B, 1, M, P), dtype=torch.bool, device=s.device), rows_ok], -1)
        s = s.masked_fill(~full_ok, float("-inf"))
    p = torch.softmax(s, -1).to(value.dtype)
    p_p = p[..., :P].transpose(0, 1).reshape(Hkv, B * M, P)
    out_p = torch.bmm(p_p, vp[0].to(p_p.dtype)).view(Hkv, B, M, d).transpose(0, 1)  # (B, Hkv, M, d)
    out = out_p + torch.matmul(p[..., P:], value)  # (B, Hkv, M, d)
    out = out.reshape(B, Hq, q, d).transpose(1, 2).contiguous()  # (B, q, Hq, d)
    return out, None


def _register_prefix_attention() -> bool:
    """Register :func:`prefix_attention` (and SDPA's mask builder) with transformers, once."""
    if _REGISTERED["done"]:
        return _REGISTERED["ok"]
    _REGISTERED["done"] = True
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(PREFIX_ATTN, prefix_attention)
        AttentionMaskInterface.register(PREFIX_ATTN, sdpa_mask)
        _REGISTERED["ok"] = True
    except Exception:  # older transformers: use the copying fallback
        _REGISTERED["ok"] = False
    return _REGISTERED["ok"]


def enable_shared_prefix(model: Any) -> bool:
    """Switch ``model``'s attention from SDPA to :func:`prefix_attention` (identical results
    while no prefix is active). False when the model does not use SDPA through the interface."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or not _register_prefix_attention():
        return False
    cur = getattr(cfg, "_attn_implementation", None)
    if cur == PREFIX_ATTN:
        return True
    if cur != "sdpa":
        return False
    if not any(hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups") for m in base.modules()):
        return False
    try:
        cfg._attn_implementation = PREFIX_ATTN
    except Exception:
        return False
    return cfg._attn_implementation == PREFIX_ATTN


def cache_kv(cache: Any) -> list[tuple[Any, Any]]:
    """Per-layer (keys, values) of a transformers cache; shapes (batch, kv_heads, seq, head_dim)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def make_cache(kv: list[tuple[Any, Any]], config: Any, batch: int) -> Any:
    """A fresh DynamicCache holding ``kv`` repeated ``batch`` times (copied, never shared)."""
    from transformers import DynamicCache

    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
    try:
        return DynamicCache(data, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple((k.contiguous(), v.contiguous()) for k, v in data))


def select_rows(cache: Any, idx: Any) -> None:
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(idx)
        return
    for layer in cache.layers:  # pragma: no cover - old API
        layer.keys, layer.values = layer.keys[idx], layer.values[idx]
