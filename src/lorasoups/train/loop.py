"""The training kit of the learned procedures: CAT coefficients, MoE routers, LoRA Hub's objective.

One place for what every small trainer needs, read top to bottom: device and precision choice
(:func:`resolve_precision`, one bf16 probe in :func:`lorasoups.devices.native_bf16`), autocast,
data splits (:func:`split_examples`), length-grouped micro-batches (:func:`batches`), the step count
(:func:`steps_for`), the learning-rate schedule (transformers' ``get_scheduler``), the one
memory-lean LM loss (:func:`lorasoups.train.loss.lm_loss_sum`), the held-out loss (:func:`eval_loss`)
and the optimisation loop (:func:`fit`). Skill-LoRA training (:mod:`.sft`, the Hugging Face Trainer)
shares the precision choice, the loss and the data pieces.

Several processes (``accelerate launch --multi_gpu --num_processes N``; on a machine without GPUs
that starts N CPU processes with gloo): :class:`Dist` wraps accelerate's
``Accelerator``. Each optimiser micro-step draws one *global* batch of ``batch_size · N`` examples
from the same seeded stream on every process, process k takes the k-th contiguous slice, the loss
is the summed cross-entropy divided by the global number of scored tokens, and the gradients of the
(small) trained tensors are all-reduced. The result equals one process with batch ``batch_size · N``
up to float summation order. The model is not wrapped in DDP: its wrapper would hide the decoder /
head split the memory-lean loss needs, and only the few merge-weight tensors train.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Sequence

from ..errors import ConfigError, DataError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- device, precision

def resolve_precision(precision: str, device: str) -> tuple[str, str]:
    """Choose the autocast precision for training.

    ``auto``: on CUDA, bf16 where supported else fp16; on CPU, bf16 when the CPU has native bf16
    arithmetic (:func:`lorasoups.devices.native_bf16`), else fp32. Trained weights and optimizer
    state stay fp32 in every case (autocast only lowers the matmuls).

    Returns:
        ``(precision, reason)`` with precision in ``fp32 | bf16 | fp16``.

    Raises:
        ConfigError: unknown value, or fp16 on CPU.
    """
    from ..devices import cpu_flags, device_type, native_bf16
    from ..registry import suggest

    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}{suggest(precision, PRECISIONS)}; choose from {', '.join(PRECISIONS)}")
    if device_type(device) == "cuda":
        if precision == "auto":
            return ("bf16", "auto: CUDA device supports bf16") if native_bf16("cuda") else \
                ("fp16", "auto: CUDA device without bf16 support")
        return precision, "requested"
    if precision == "fp16":
        raise ConfigError("precision fp16 needs a GPU; on CPU use bf16 or fp32")
    native = native_bf16("cpu")
    if precision == "auto":
        if native:
            flags = cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"}
            return "bf16", f"auto: CPU has {', '.join(sorted(flags))}"
        return "fp32", "auto: CPU lacks avx512_bf16/amx_bf16"
    if precision == "bf16" and not native:
        return "bf16", "requested (CPU lacks native bf16: expect it to be slow)"
    return precision, "requested"


def autocast(precision: str, device: str):
    """``torch.autocast`` to bf16 / fp16 for those precisions (weights and trained tensors stay
    fp32; only matmuls are lowered), else a no-op context."""
    import torch

    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu",
                              dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


class Dist:
    """The process group of a run (accelerate's ``Accelerator``): rank, world size, device, sums.

    In a plain process ``world == 1`` and every method is the identity; under ``accelerate launch``
    the sums are all-reduces (gloo on CPU, NCCL on CUDA).
    """

    def __init__(self, device: str = "auto"):
        from accelerate import Accelerator

        from ..devices import resolve_device

        dev = resolve_device(device)
        self.acc = Accelerator(cpu=dev == "cpu")
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.device = dev if self.world == 1 or dev == "cpu" else str(self.acc.device)

    def sum(self, x):
        """All-reduced sum of a tensor (the tensor itself in one process)."""
        return x if self.world == 1 else self.acc.reduce(x, reduction="sum")

    def average_grads(self, params) -> None:
        """Mean of every parameter's gradient over the processes (missing gradients count as 0)."""
        if self.world == 1:
            return
        import torch

        for p in params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = self.acc.reduce(g, reduction="mean")

    def wait(self) -> None:
        self.acc.wait_for_everyone()


# ----------------------------------------------------------------------------- data

def is_examples(data: Sequence[Any]) -> bool:
    """True when ``data`` is already tokenised examples (dicts with ``input_ids``), not data specs."""
    return bool(data) and all(isinstance(d, dict) and "input_ids" in d for d in data)


def unique_names(names: Sequence[str]) -> list[str]:
    """Make display names unique by suffixing ``#2``, ``#3``... to repeats."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def load_mix(data: Sequence[Any], tok: Any, o: Any, *, seed: int, data_dir: str | None = None, what: str = "CAT",
             **extra: Any) -> tuple[list[dict], dict | None, Any]:
    """The skill mix a learned merge trains on: ``data`` specs loaded by
    :func:`~lorasoups.train.data.load_training_data` with the options' ``cutoff_len``, ``max_samples``,
    ``fraction`` and ``long_responses`` (``extra``: further keyword arguments, e.g.
    ``skip_long_prompts``), length cuts printed as ``<what>: data: ...``; or already tokenised examples.

    Returns:
        ``(examples, data_stats, td)``: the examples, per-source counts and cuts (None for tokenised
        input) and the loaded :class:`~lorasoups.train.data.TrainingData` (None for tokenised input).

    Raises:
        DataError: the data cannot be loaded or gives no examples.
    """
    if is_examples(data):
        examples, stats, td = list(data), None, None
    else:
        from .data import load_training_data

        td = load_training_data(data, tok, cutoff_len=o.cutoff_len, max_samples=o.max_samples, fraction=o.fraction,
                                seed=seed, data_dir=data_dir, long_responses=o.long_responses, **extra)
        examples = td.examples
        stats = {"sources": [x.as_dict() for x in td.sources], **td.cut_summary()}
        for line in td.cut_report():
            print(f"{what.lower()}: data: {line}", flush=True)
    if not examples:
        raise DataError(f"{what}: the data {list(data)[:5]} gave no training examples")
    return examples, stats, td


def split_examples(examples: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle (seeded) and hold out ``round(val_fraction * N)`` examples (at least 1 when
    ``val_fraction > 0`` and N ≥ 2) for the validation loss of the mix. Returns (train, val)."""
    ex = list(examples)
    random.Random(seed).shuffle(ex)
    if val_fraction <= 0 or len(ex) < 2:
        return ex, []
    k = min(len(ex) - 1, max(1, round(val_fraction * len(ex))))
    return ex[k:], ex[:k]


def examples_digest(examples: Sequence[dict]) -> str:
    """Hex SHA-256 of a *multiset* of tokenised examples (``input_ids`` and ``labels`` of each; order
    does not count), so two procedures can show they trained on the same examples (CAT and the
    fresh-LoRA control of :mod:`lorasoups.train.controls` record it)."""
    import hashlib
    import json

    each = sorted(hashlib.sha256(json.dumps([list(e["input_ids"]), list(e.get("labels") or [])],
                                            separators=(",", ":")).encode()).hexdigest() for e in examples)
    return hashlib.sha256("".join(each).encode()).hexdigest()


def batches(examples: list[dict], batch_size: int, seed: int, group_by_length: bool = False) -> Iterator[list[dict]]:
    """Endless stream of lists of ``batch_size`` examples: seeded shuffle per epoch (epoch e uses
    seed + e); the last short batch of an epoch is kept.

    ``group_by_length``: the same shuffled examples of each epoch are cut into mega-batches of
    ``m · batch_size`` (m = min(50, N // (2 · batch_size)), at least 1), each sorted by length
    (``len(input_ids)``, longest first) and cut into batches, and the epoch's batches are then
    shuffled (same seed): every epoch still holds every example exactly once, but a batch holds
    examples of similar length, so little of it is padding (as transformers' ``LengthGroupedSampler``).
    """
    e = 0
    n = len(examples)
    mega = max(1, min(50, n // (2 * batch_size))) * batch_size
    while True:
        order = list(range(n))
        rng = random.Random(seed + e)
        rng.shuffle(order)
        if group_by_length:
            epoch = []
            for m in range(0, n, mega):
                part = sorted(order[m:m + mega], key=lambda j: -len(examples[j]["input_ids"]))
                epoch += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
            rng.shuffle(epoch)
        else:
            epoch = [order[k:k + batch_size] for k in range(0, n, batch_size)]
        for b in epoch:
            yield [examples[j] for j in b]
        e += 1


def steps_for(n_train: int, *, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None,
              world: int = 1) -> int:
    """Optimiser steps: ``max_steps``, or ``epochs`` passes over ``n_train`` examples in global
    steps of ``batch_size · grad_accum · world`` examples (at least 1)."""
    if max_steps is not None:
        return int(max_steps)
    return max(1, math.ceil(epochs * math.ceil(n_train / (batch_size * grad_accum * world))))


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- losses

def eval_loss(model, examples: list[dict], *, pad_token_id: int, batch_size: int, precision: str = "fp32",
              device: str = "cpu", dist: Dist | None = None) -> float:
    """Token-weighted mean next-token cross-entropy (nats) of ``model`` on tokenised ``examples``
    (labels -100 ignored), no gradients; under several processes each takes a slice and the sums
    are all-reduced.

    Raises:
        DataError: no scored token in ``examples``.
    """
    import torch

    from .data import collate
    from .loss import lm_loss_sum

    world, rank = (dist.world, dist.rank) if dist else (1, 0)
    mine = examples[rank::world] if world > 1 else examples
    total = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(precision, device):
        for k in range(0, len(mine), batch_size):
            s, n = lm_loss_sum(model, to_device(collate(mine[k:k + batch_size], pad_token_id), device))
            total += torch.stack([s.double(), torch.tensor(float(n), dtype=torch.float64, device=device)])
    total = dist.sum(total) if dist else total
    model.train(was_training)
    if float(total[1]) == 0:
        raise DataError("no scored (label) token in the examples")
    return float(total[0] / total[1])


# ----------------------------------------------------------------------------- the loop

@contextlib.contextmanager
def activation_checkpointing(model, on: bool):
    """While active (``on``), every decoder layer of ``model`` (a transformers model, possibly
    PEFT-wrapped or with wrapped linear layers) keeps only its input in the forward pass and recomputes
    its activations in the backward pass (transformers' gradient checkpointing, non-reentrant, so
    no input needs ``requires_grad``). Gradients are unchanged; activation memory drops from all
    layers' to about one layer's, for one more forward pass of compute.

    Raises:
        ConfigError: ``on`` and the model does not support gradient checkpointing.
    """
    if not on:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: {type(base).__name__} does not support it")
    # enabling also hooks the embeddings so their output requires grad; disabling removes that hook
    # only on PEFT-loaded models, so the hooks added here are removed here
    had_hooks = bool(getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None))
    # newer transformers name it activation checkpointing; older releases gradient checkpointing
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()
        if not had_hooks and hasattr(base, "disable_input_require_grads"):
            base.disable_input_require_grads()


def fit(model, params: list, train: list[dict], *, optimizer, pad_token_id: int, max_steps: int,
        lr_scheduler: str = "linear", warmup_steps: int = 0, batch_size: int = 8, grad_accum: int = 1,
        seed: int = 0, precision: str = "fp32", device: str = "cpu", group_by_length: bool = False,
        max_grad_norm: float | None = None, before_forward: Callable[[dict], None] | None = None,
        aux_loss: Callable[[], Any] | None = None, aux_weight: float = 0.0, log_every: int = 1,
        on_log: Callable[[dict], None] | None = None, desc: str | None = None, what: str = "training",
        dist: Dist | None = None, gradient_checkpointing: bool = False) -> list[dict]:
    """Train ``params`` (already in ``optimizer``) on the causal-LM loss of ``train``.

    Each of ``max_steps`` optimiser steps runs ``grad_accum`` micro-batches of ``batch_size``
    examples per process (:func:`batches`; one global batch sliced across processes, see the module
    docstring); the micro-batch loss is Σ CE / (scored tokens of the global micro-batch), plus
    ``aux_weight · aux_loss()`` when given (MoE load balancing, read after the forward).
    Weighted examples (every example carries ``"loss_weight"`` w_e > 0, a weight of each of its scored
    tokens; CAT's ``mix=balanced``): the micro-batch loss is Σ_e w_e Σ_t CE_{e,t} / (batch_size · N)
    over the global micro-batch of nominal size batch_size · N (N processes). The normaliser does not
    depend on which examples share the batch, so over an epoch (every example once) the step losses
    average to (1/n_train) Σ_e w_e Σ_t CE_{e,t} whatever the batching, ``grad_accum`` or
    ``group_by_length`` (a short last batch of an epoch weighs less); a per-batch token mean would
    instead cancel the weights in a batch that holds one kind of example. The weights carry any
    per-token normalisation. A
    micro-batch without any scored token is skipped; a step with none does not step the optimiser.
    The learning rate follows ``transformers.get_scheduler(lr_scheduler, warmup_steps, max_steps)``
    (``linear`` with no warm-up: lr · (T - t) / T at step t, never 0 on the last step).

    Args:
        before_forward: called with each (device) micro-batch before its forward (MoE token masks).
        on_log: called with every log record before it is stored; may add keys.
        desc: a tqdm progress bar with this title (main process; None: no bar).
        gradient_checkpointing: recompute decoder-layer activations in the backward pass
            (:func:`activation_checkpointing`).

    Returns:
        log records ``{"step", "loss", "lr", "seconds"}`` (+ ``"ce"``, ``"balance"`` with
        ``aux_loss``) every ``log_every`` steps and at the last; loss in nats per scored token,
        mean over the step's micro-batches.

    Raises:
        DataError: no examples, some but not all examples weighted, a weight that is not > 0, or a
            non-finite loss.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from ..progress import progress_enabled
    from .data import collate
    from .loss import lm_loss_sum

    if not train:
        raise DataError(f"{what}: no training examples")
    n_weighted = sum("loss_weight" in e for e in train)
    if n_weighted not in (0, len(train)):
        raise DataError(f"{what}: {n_weighted} of {len(train)} examples carry a loss_weight; give it to all or none")
    weighted = n_weighted > 0
    if weighted and not all(float(e["loss_weight"]) > 0 for e in train):
        raise DataError(f"{what}: every loss_weight must be > 0")
    world, rank = (dist.world, dist.rank) if dist else (1, 0)
    sched = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps)
    stream = batches(train, batch_size * world, seed, group_by_length)
    log: list[dict] = []
    t0 = time.time()
    bar = tqdm(total=max_steps, desc=desc, unit="step",
               disable=desc is None or rank != 0 or not progress_enabled(True))
    model.train()
    stack = contextlib.ExitStack()
    stack.enter_context(activation_checkpointing(model, gradient_checkpointing))
    try:
        for step in range(max_steps):
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            ces, auxes = [], []
            for _ in range(grad_accum):
                glob = next(stream)
                k = math.ceil(len(glob) / world)
                mine = glob[rank * k:(rank + 1) * k]
                b = to_device(collate(mine, pad_token_id), device) if mine else None
                n_loc = int((b["labels"][:, 1:] != -100).sum()) if b is not None else 0
                n_glob = int(dist.sum(torch.tensor(n_loc, device=device))) if world > 1 else n_loc
                if n_glob == 0:
                    continue  # nothing to predict in this micro-batch (all prompt tokens)
                norm, w_rows = n_glob, None
                if weighted:  # a weighted sum over the nominal global micro-batch
                    w_rows = torch.tensor([float(e["loss_weight"]) for e in mine] if mine else [])
                    norm = batch_size * world
                s = torch.zeros((), device=device)
                aux = None
                if n_loc:
                    if before_forward is not None:
                        before_forward(b)
                    with autocast(precision, device):
                        s, _ = lm_loss_sum(model, b) if w_rows is None else lm_loss_sum(model, b, weights=w_rows)
                    aux = aux_loss() if aux_loss is not None else None
                    loss = s / norm * world + (aux_weight * aux if aux is not None else 0.0)
                    if not torch.isfinite(loss):
                        raise DataError(f"{what}: non-finite loss at step {step + 1}; try a smaller learning_rate")
                    (loss / grad_accum).backward()
                ces.append(float((dist.sum(s.detach().float()) if world > 1 else s.detach()) / norm))
                auxes.append(None if aux is None else float(aux.detach()))
            if ces:
                if dist is not None:
                    dist.average_grads(params)
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
            sched.step()
            if (step + 1) % max(1, log_every) == 0 or step + 1 == max_steps:
                ce = sum(ces) / len(ces) if ces else None
                rec: dict[str, Any] = {"step": step + 1, "loss": None if ce is None else round(ce, 6),
                                       "lr": lr, "seconds": round(time.time() - t0, 2)}
                if aux_loss is not None:
                    av = [a for a in auxes if a is not None]
                    am = sum(av) / len(av) if av else None
                    rec.update(loss=None if ce is None else round(ce + (aux_weight * am if am else 0.0), 6),
                               ce=None if ce is None else round(ce, 6), balance=None if am is None else round(am, 6))
                if on_log:
                    on_log(rec)
                log.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}" if rec["loss"] is not None else "-")
            bar.update(1)
    finally:
        stack.close()
        bar.close()
    model.eval()
    return log
