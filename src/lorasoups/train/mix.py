"""The objective of CAT's training mix over several skills (``CatOptions.mix``).

``pooled`` (the default): the token mean of the cross-entropy over the concatenated skill data, so a
skill weighs in proportion to its scored tokens (math_code at the cpu preset: 0.81 GSM8K, 0.19
CodeAlpaca). ``balanced``: the mean over the K skills of each skill's token mean,

    L = (1/K) Σ_k (1/T_k) Σ_{t ∈ skill k} CE_t,

T_k being skill k's scored tokens in the training part of the mix (N examples). Every token of
skill k carries the weight w_k = N / (K · T_k), and the training kit's micro-batch loss is the
weighted sum Σ_e w_e Σ_t CE_{e,t} / B over the nominal global micro-batch of B examples
(:func:`lorasoups.train.loop.fit`): on a batch holding the whole training part (B = N) it is L
exactly, and over an epoch (each example once) the step losses average to L whatever the batching,
``grad_accum``, ``group_by_length`` or number of processes (up to the lighter short last batch).

The pooled loss is a token mean per micro-batch, so its skill weights follow the batches: with
``group_by_length`` (the default) a batch mostly holds one skill's examples, each batch weighs the
same, and a skill's share of the objective is closer to its share of the *examples* than of the
tokens. :func:`objective_shares` measures the share each skill actually has in a run's steps.

A *skill* is one data spec of CAT's ``data`` (the experiment runner passes one spec per skill), or,
for already tokenised examples, the value of their ``"skill"`` key.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError

MIXES = ("pooled", "balanced")


def scored_tokens(example: dict) -> int:
    """Tokens of an example whose next-token loss counts: labels at positions ≥ 1 that are not -100
    (as :func:`lorasoups.train.loss.lm_loss_sum` counts them; no labels: every position ≥ 1)."""
    labels = example.get("labels", example["input_ids"])
    return sum(1 for x in labels[1:] if x != -100)


def tag_skills(examples: Sequence[dict], origin: Sequence[int] | None) -> list[dict]:
    """Examples with their skill index under ``"skill"`` (shallow copies; ``origin[i]`` is the skill
    of example i). Examples that already carry ``"skill"`` and ``origin=None`` are returned as they are."""
    if origin is None:
        return list(examples)
    if len(origin) != len(examples):
        raise ValueError(f"{len(origin)} origins for {len(examples)} examples")
    return [{**ex, "skill": int(k)} for ex, k in zip(examples, origin)]


def skill_names(examples: Sequence[dict], names: Sequence[str] | None = None) -> list[Any]:
    """The skills present in ``examples`` (values of ``"skill"``), in first-seen order, or
    indices 0..len(names)-1 when ``names`` is given."""
    if names is not None:
        return list(range(len(names)))
    return list(dict.fromkeys(ex["skill"] for ex in examples if "skill" in ex))


def apply_mix(train: Sequence[dict], val: Sequence[dict], mix: str,
              names: Sequence[str] | None = None) -> tuple[list[dict], dict[str, Any] | None]:
    """Give every training example its ``loss_weight`` for ``mix`` and describe the mix.

    Args:
        train, val: examples, tagged with ``"skill"`` (:func:`tag_skills`) where the skills are known.
        mix: ``pooled`` (examples returned unweighted) or ``balanced``.
        names: display name of each skill index (data spec names); None: the ``"skill"`` values.

    Returns:
        (training examples, record) where record is ``{"mix", "skills": [{"name", "train_examples",
        "train_tokens", "val_examples", "token_share"}]}`` (token_share: the skill's share of the
        objective's weight) or None when the examples carry no skill.

    Raises:
        ConfigError: unknown ``mix``, or ``balanced`` for examples whose skill is unknown.
    """
    if mix not in MIXES:
        raise ConfigError(f"unknown mix {mix!r}; use one of {', '.join(MIXES)}")
    tagged = bool(train) and all("skill" in ex for ex in train)
    if not tagged:
        if mix == "balanced":
            raise ConfigError("mix=balanced needs each example's skill: give the skills' data specs (one per "
                              "skill), or tokenised examples with a 'skill' key")
        return list(train), None
    keys = skill_names(train, names)
    label = (lambda k: names[k]) if names is not None else str
    tokens = {k: 0 for k in keys}
    n_train = {k: 0 for k in keys}
    for ex in train:
        tokens[ex["skill"]] += scored_tokens(ex)
        n_train[ex["skill"]] += 1
    n_val = {k: sum(1 for ex in val if ex.get("skill") == k) for k in keys}
    total = sum(tokens.values())
    live = [k for k in keys if tokens[k] > 0]  # skills with scored tokens in the training part
    if mix == "balanced":
        weight = {k: len(train) / (len(live) * tokens[k]) for k in live}
        share = {k: (1.0 / len(live) if k in weight else 0.0) for k in keys}
        out = [{**ex, "loss_weight": weight.get(ex["skill"], 1.0)} for ex in train]
    else:
        share = {k: (tokens[k] / total if total else 0.0) for k in keys}
        out = list(train)
    rec = {"mix": mix, "skills": [{"name": label(k), "train_examples": n_train[k], "train_tokens": tokens[k],
                                   "val_examples": n_val[k], "token_share": round(share[k], 6)} for k in keys]}
    return out, rec


def objective_shares(train: Sequence[dict], names: Sequence[str] | None, *, batch_size: int, world: int,
                     grad_accum: int, steps: int, seed: int, group_by_length: bool) -> dict[str, float]:
    """Each skill's share of the objective summed over a run's ``steps`` optimiser steps, as the
    training kit batches them (:func:`lorasoups.train.loop.batches`, the same seeded stream): a
    micro-batch gives skill k its scored tokens' part of the micro-batch loss (pooled: T_k,mb / T_mb;
    weighted examples: Σ_{e ∈ k} w_e n_e / (batch_size · world)). Shares sum to 1; {} when the
    examples carry no skill or there are no steps."""
    from .loop import batches

    if not train or not steps or not all("skill" in ex for ex in train):
        return {}
    weighted = "loss_weight" in train[0]
    stream = batches(list(train), batch_size * world, seed, group_by_length)
    acc: dict[Any, float] = {}
    for _ in range(steps * grad_accum):
        mb = next(stream)
        n = [scored_tokens(ex) for ex in mb]
        tot = sum(n)
        if not tot:
            continue  # the kit skips a micro-batch with nothing to predict
        for ex, ne in zip(mb, n):
            part = ex["loss_weight"] * ne / (batch_size * world) if weighted else ne / tot
            acc[ex["skill"]] = acc.get(ex["skill"], 0.0) + part
    z = sum(acc.values())
    keys = skill_names(train, names)
    return {(names[k] if names is not None else str(k)): round(acc.get(k, 0.0) / z, 6) for k in keys} if z else {}


def loss_by_skill(eval_loss, model, val: Sequence[dict], names: Sequence[str] | None = None,
                  **kw: Any) -> dict[str, float]:
    """Held-out loss of each skill (token mean of its own examples, nats) with ``eval_loss``
    (:func:`lorasoups.train.loop.eval_loss`; ``kw`` its options); skills without a held-out
    example are left out. Empty when the examples carry no skill."""
    if not val or not all("skill" in ex for ex in val):
        return {}
    out = {}
    for k in skill_names(val, names):
        part = [ex for ex in val if ex["skill"] == k]
        if any(scored_tokens(ex) for ex in part):
            out[names[k] if names is not None else str(k)] = eval_loss(model, part, **kw)
    return out
