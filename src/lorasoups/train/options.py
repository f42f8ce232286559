"""Option specs of the training-like procedures: skill LoRAs / DATA-MIX (``train``), CAT, MoE, LoRA Hub.

One declaration per option (:mod:`lorasoups.spec`): config validation, CLI flags (``XOptions.add_arguments``),
``lorasoups ls methods`` and the procedures' own parsing all read these classes. The shared training names
(:class:`FitOptions`) are spelled the same everywhere: ``learning_rate``, ``max_steps``, ``epochs``,
``lr_scheduler`` (transformers' scheduler names), ``warmup_steps``, ``batch_size``, ``grad_accum``,
``cutoff_len``, ``fraction``, ``max_samples``, ``val_fraction``, ``precision``, ``group_by_length``, ``seed``.
The old CAT / MoE names ``lr``, ``steps``, ``schedule`` are refused with a message naming the new one.

Kept import-light (pydantic only) so that building the command line does not import torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import field_validator, model_validator

from ..spec import Spec, opt

PRECISION = Literal["auto", "fp32", "bf16", "fp16"]
SCHEDULER = Literal["linear", "constant", "cosine", "constant_with_warmup"]
LONG_RESPONSES = Literal["skip", "keep"]
OLD_NAMES = {"lr": "learning_rate", "steps": "max_steps", "schedule": "lr_scheduler"}


class FitOptions(Spec):
    """Options shared by the small trainers of merge weights (CAT coefficients, MoE routers)."""

    renamed = dict(OLD_NAMES)
    learning_rate: float = opt(1e-3, "optimiser learning rate", gt=0)
    max_steps: int | None = opt(None, "optimiser steps; none: `epochs` passes over the training part of the mix", ge=1)
    epochs: float = opt(1.0, "passes over the training part of the mix (when max_steps is none)", gt=0)
    lr_scheduler: SCHEDULER = opt("linear", "learning-rate schedule (transformers' get_scheduler)")
    warmup_steps: int = opt(0, "steps of linear warm-up of the learning rate", ge=0)
    batch_size: int = opt(8, "examples per micro-batch (per process under accelerate launch)", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimiser step", ge=1)
    group_by_length: bool = opt(True, "batch examples of similar length together (seeded; same examples per epoch)")
    fraction: float | None = opt(0.05, "fraction of each skill dataset used (the paper's 5 %)", gt=0, le=1)
    max_samples: int | None = opt(None, "cap on examples per skill dataset", ge=1)
    cutoff_len: int = opt(256, "maximum tokens per example", ge=8, unit="tokens")
    long_responses: LONG_RESPONSES = opt("skip", "records whose response does not fit cutoff_len: skip or keep cut")
    val_fraction: float = opt(0.1, "part of the mix held out for the validation loss before/after", ge=0, lt=1)
    precision: PRECISION = opt("auto", "autocast precision; auto = bf16 where the hardware has native bf16, else fp32")
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in the backward pass: "
                                              "less memory, more time (docs/speed.md)")
    seed: int = opt(0, "seeds data sampling, batch order and initialisation")


class CatOptions(FitOptions):
    """CAT (Prabhakar et al. 2024, §3): per-module coefficients of frozen skill LoRAs."""

    granularity: Literal["module", "layer", "global"] = opt("module", "one coefficient per adapter per module, layer or globally")
    normalize: Literal["softmax", "none"] = opt("softmax", "softmax across adapters (reference code) or raw (paper formula)")
    init: str | float | list[float] = opt("uniform", "uniform, random (seeded normal logits), a number or n numbers")
    mix: Literal["pooled", "balanced"] = opt("pooled", "training objective over the skill data: pooled = token mean over "
                                             "the concatenated mix; balanced = mean over skills (data specs) of each "
                                             "skill's token mean")
    missing: Literal["share", "exclude"] = opt("share", "a module some adapter lacks: share = softmax over all adapters "
                                               "(the absent one keeps a share); exclude = over the adapters present")
    learning_rate: float = opt(5e-2, "Adam learning rate of the coefficient logits", gt=0)
    skip_long_prompts: bool = opt(True, "drop records whose prompt does not fit cutoff_len (else: error)")
    no_train: bool = opt(False, "export the initial coefficients (the static controls); no data needed")
    log_every: int = opt(1, "log every N steps", ge=1)

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, v):
        if isinstance(v, str) and v.strip().lower() not in ("uniform", "random"):
            try:
                nums = [float(x) for x in v.split(",") if x.strip()]
            except ValueError:
                raise ValueError("use uniform, random, a number, or n comma-separated numbers") from None
            if not nums or not all(math.isfinite(x) for x in nums):
                raise ValueError("values must be finite numbers")
        return v


class MoeOptions(FitOptions):
    """Mixture of LoRA experts: per-token top-k routers over frozen skill LoRAs."""

    top_k: int = opt(2, "experts per token (clipped to n)", ge=1)
    router_layers: str | list[int] | None = opt("all", "decoder layers with routers: all, none or e.g. 0,2,10-15")
    balance_loss: float = opt(0.01, "weight of the load-balancing loss (0 = off)", ge=0)
    router_init_std: float = opt(0.01, "std of the seeded router init (0 = uniform gates)", ge=0)
    cutoff_len: int = opt(512, "maximum tokens per example", ge=8, unit="tokens")


class LoraHubOptions(Spec):
    """LoRA Hub (Huang et al. 2023): gradient-free search of one merge weight per adapter."""

    budget: int = opt(40, "candidates evaluated by the search", ge=1)
    space: Literal["delta", "factors"] = opt("delta", "delta: exact Σ w_i ΔW_i; factors: the original's (Σ w B)(Σ w A)")
    l1: float = opt(0.05, "weight of the L1 penalty l1 · mean|w|", ge=0)
    bounds: tuple[float, float] = opt((-1.5, 1.5), "search box of every weight (lower, upper)")
    examples: int = opt(5, "K few-shot examples drawn (seeded) from the data", ge=1)
    optimizer: str = opt("NGOpt", "nevergrad optimiser name")
    init: float = opt(0.0, "initial value of every weight")
    batch_size: int = opt(4, "examples per forward pass", ge=1)
    cutoff_len: int = opt(512, "maximum tokens per example", ge=8, unit="tokens")
    long_responses: LONG_RESPONSES = opt("skip", "examples whose answer does not fit cutoff_len: skip or keep cut")
    precision: PRECISION = opt("fp32", "autocast precision of the objective (fp32 as the original)")
    seed: int = opt(0, "seeds the example choice and the optimiser")

    @model_validator(mode="after")
    def _box(self):
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"bounds must satisfy lower < upper, got {lo} {hi}")
        if not lo <= self.init <= hi:
            raise ValueError(f"init {self.init} is outside the bounds [{lo}, {hi}]")
        return self


class TrainOptions(Spec):
    """Options of skill-LoRA training (``lorasoups train``, :func:`lorasoups.train.sft.train_lora`).

    Defaults aim at a skill LoRA on SmolLM2-135M that learns its answer format within about ten
    CPU minutes: 200 steps of 8 examples of at most 256 tokens (≈ 250k training tokens), rank 8
    on all attention and MLP projections, learning rate 5e-4 with 10 warm-up steps and cosine decay.

    ``group_by_length`` (default on): each epoch's examples are batched with others of similar length
    (transformers' ``LengthGroupedSampler``, from the seeded torch RNG), so far fewer positions are
    padding (cpu preset of configs/math_code.yaml: 2.3% instead of 38.3%). It changes which examples
    share a batch and their order, hence the exact results, but not the data, the number of steps or
    the loss definition; ``group_by_length=False`` gives uniformly random batches.
    """

    renamed = dict(OLD_NAMES)  # the same old spellings as CAT / MoE, refused naming the new one
    r: int = opt(8, "LoRA rank", ge=1)
    lora_alpha: float = opt(16.0, "LoRA alpha (scaling = lora_alpha / r)", gt=0)
    lora_dropout: float = opt(0.05, "dropout on the LoRA input", ge=0, lt=1)
    target_modules: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    "module names that get a LoRA")
    learning_rate: float = opt(5e-4, "AdamW learning rate", gt=0)
    max_steps: int | None = opt(200, "optimiser steps (none: whole epochs)", ge=1)
    epochs: float | None = opt(None, "passes over the data (when max_steps is none)", gt=0)
    batch_size: int = opt(8, "examples per micro-batch per process", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimiser step", ge=1)
    cutoff_len: int = opt(256, "max tokens per example; raw text is chunked to it", ge=8, unit="tokens")
    warmup_steps: int = opt(10, "steps of linear warm-up", ge=0)
    lr_scheduler: SCHEDULER = opt("cosine", "learning-rate schedule (transformers' get_scheduler)")
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm", gt=0)
    seed: int = opt(0, "seeds data selection, LoRA init and batch order")
    val_fraction: float = opt(0.0, "part of the data held out for a validation loss", ge=0, lt=1)
    max_samples: int | None = opt(None, "at most this many examples from each data spec", ge=1)
    fraction: float | None = opt(None, "keep this fraction of each data spec", gt=0, le=1)
    weights: list[float] | None = opt(None, "DATA-MIX mixing weights, one per data spec")
    train_on_inputs: bool = opt(False, "also take the loss on prompt tokens")
    text_overlap: int = opt(32, "tokens shared by consecutive raw-text chunks", ge=0, unit="tokens")
    skip_long_prompts: bool = opt(False, "drop records whose prompt does not fit cutoff_len instead of failing")
    long_responses: LONG_RESPONSES = opt("skip", "records whose response does not fit cutoff_len: skip or keep cut")
    precision: PRECISION = opt("auto", "autocast precision; auto = bf16 where the hardware has native bf16")
    gradient_checkpointing: bool = opt(False, "recompute each decoder layer's activations in the backward pass: "
                                              "less memory, more time (docs/speed.md)")
    save_steps: int = opt(50, "checkpoint every N steps", ge=1)
    save_total_limit: int = opt(2, "checkpoints kept", ge=1)
    logging_steps: int = opt(1, "log every N steps", ge=1)
    data_dir: str | None = opt(None, "folder of the catalogue datasets", cli=False)
    group_by_length: bool = opt(True, "batch examples of similar length together")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, v):
        items = [v] if isinstance(v, str) else v
        return [t.strip() for x in items for t in str(x).split(",") if t.strip()] if isinstance(items, list) else v

    @field_validator("target_modules")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError("target_modules is empty")
        return v

    @model_validator(mode="before")
    @classmethod
    def _epochs_alone(cls, v):
        if isinstance(v, dict) and v.get("epochs") and "max_steps" not in v:
            v = {**v, "max_steps": None}  # epochs given alone: train whole epochs
        return v

    @model_validator(mode="after")
    def _length(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give max_steps > 0 or epochs > 0")
        return self


class DataMixOptions(TrainOptions):
    """DATA-MIX (LoRA Soups §4): one LoRA on the union of the skills' data; ``weights`` mix them."""


class RandomLikeOptions(Spec):
    """How the random-like LoRAs of the ``cat_random`` control are drawn (:mod:`lorasoups.train.random_like`)."""

    random_norm: Literal["delta", "factors"] = opt(
        "delta", "per module, match ||A|| and ||ΔW|| = ||s·BA|| of the original (delta) or ||A|| and ||B|| (factors)")
    random_seed: int | None = opt(None, "seed of the Gaussian draws (adapter i gets its own seed from it); "
                                        "none: the procedure's seed")


class CatRandomOptions(CatOptions, RandomLikeOptions):
    """CAT over random-like LoRAs of the skill LoRAs (same shapes, scales and norms): CAT's options
    plus :class:`RandomLikeOptions`. In an experiment config, ``cat`` names the CAT row whose options,
    skills and data it copies (filled in by config validation); ``cat: null`` uses its own options."""

    cat: str | None = opt("cat", "label of the CAT row whose options, skills and data it copies (none: its own)")


class CatDataLoraOptions(TrainOptions):
    """A fresh LoRA trained on exactly the examples and steps of a CAT row (``lora_cat_data``).

    LoRA shape and optimiser (r, lora_alpha, lora_dropout, target_modules, learning_rate, warmup_steps,
    lr_scheduler, weight_decay, max_grad_norm, precision, ...) come from the experiment's ``train``
    block and may be overridden here; the data and the step count come from the CAT row named by
    ``cat`` (:data:`lorasoups.train.controls.FROM_CAT`), filled in as ``cat_options`` by config validation.
    """

    cat: str = opt("cat", "label of the CAT row whose data, example draw, batch size and steps this LoRA copies")
    cat_options: dict | None = opt(None, "that CAT row's options (filled in by config validation, not set by hand)",
                                   cli=False)
