"""LoRA Hub: gradient-free search for one merge weight per LoRA adapter.

Huang et al. 2023, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA Composition"
(§3, "COMPOSE" and "ADAPT" stages): given n LoRA modules and K few-shot examples of a new task,
find weights w ∈ [lo, hi]^n minimising

    L(w) = CE(w) + λ · (1/n) Σ_i |w_i|                                           (LoraHub §3.2)

where CE(w) is the cross-entropy of the few-shot answers under the base model with the merged
adapter, and the search is gradient-free (nevergrad; the original uses its ``NGOpt`` meta-optimiser
with w initialised to 0 and bounds ±1.5). The L1 term is the mean absolute weight times λ, as in
the original implementation.

Two merge spaces (``space``):

* ``delta`` (default): the exact merge ΔW(w) = Σ_i w_i ΔW_i, represented without loss as a
  rank-sum LoRA (``lorasoups.merge.concat.concat_factors``: A' = [A_1; …; A_n],
  B' = [w_1 s_1 B_1 | … | w_n s_n B_n]).
* ``factors``: the original's merge of the factors separately, B' = Σ_i w_i s_i B_i and
  A' = Σ_i w_i A_i, so ΔW(w) = B'A' = Σ_i Σ_j w_i w_j s_i B_i A_j. Besides the intended terms it
  contains the cross terms B_i A_j (i ≠ j) — products of factors that were never trained together,
  and whose bases are arbitrary (any invertible R gives the same ΔW_i = (B_i R)(R⁻¹ A_i)) — and
  the intended terms are scaled by w_i², not w_i. It is therefore not a weighted sum of the skills'
  ΔW; it needs equal ranks per module and is kept only for a faithful comparison with the paper's
  baseline. Scales s_i are folded into B_i so a one-hot w reproduces that adapter exactly.

Each candidate w is evaluated without rebuilding the model: the adapted ``nn.Linear`` modules are
wrapped once (:class:`HubLinear`) and a candidate only rewrites small buffers in place (the column
scales w_i s_i in delta space, the merged A' and B' in factors space).

Works on causal LMs (the original supports Flan-T5 only).
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError, ConfigError, DataError
from ..methods import register_method
from ..train.options import LoraHubOptions
from ..types import AdapterRecord, LoraFactors
from ..wrap import LinearWrapper, base_linear, replace_module

SPACES = ("delta", "factors")
MERGE_OF_SPACE = {"delta": "concat", "factors": "linear_factors"}  # the registered merge that builds a candidate
WEIGHTS_FILE = "lorahub_weights.json"
TRACE_FILE = "lorahub_trace.jsonl"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------
# Objective pieces
# ----------------------------------------------------------------------------------------------

def l1_penalty(weights: Sequence[float] | np.ndarray, l1: float) -> float:
    """λ · mean |w_i| (the LoraHub regulariser, as in the original implementation)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(l1) * float(np.abs(w).mean()) if w.size else 0.0


# ----------------------------------------------------------------------------------------------
# In-place swappable wrapper
# ----------------------------------------------------------------------------------------------

class HubLinear(LinearWrapper):
    """A frozen ``nn.Linear`` plus a LoRA whose merge weights are swapped in place.

    forward(x) = base(x) + ((x A'ᵀ) ⊙ c) B'ᵀ, with x (..., d_in) -> (..., d_out), where
    A' (R, d_in), B' (d_out, R) and the column scales c (R,) are fp32 buffers set by
    :meth:`set_weights`:

    * delta space: A', B' are the stacked factors [A_1; …; A_n], [B_1 | … | B_n] (fixed) and
      c = w_{owner(j)} · s_{owner(j)} per rank column j — exactly Σ_i w_i ΔW_i.
    * factors space: A' = Σ w_i A_i, B' = Σ w_i s_i B_i (rewritten per candidate), c = 1.
    """

    def __init__(self, base: nn.Linear, factors: Sequence[LoraFactors | None], space: str, where: str = ""):
        super().__init__()
        self.base = base
        self.space = space
        self.n = len(factors)
        present = [(i, f) for i, f in enumerate(factors) if f is not None]
        if not present:
            raise ConfigError(f"{where}: no adapter has this module")
        if space == "delta":
            A = torch.cat([f.A.float() for _, f in present], dim=0)   # (R, d_in)
            B = torch.cat([f.B.float() for _, f in present], dim=1)   # (d_out, R)
            owner = torch.cat([torch.full((f.r,), i, dtype=torch.long) for i, f in present])       # (R,)
            s = torch.cat([torch.full((f.r,), float(f.scale), dtype=torch.float32) for _, f in present])  # (R,)
            self.register_buffer("lora_A", A, persistent=False)
            self.register_buffer("lora_B", B, persistent=False)
            self.register_buffer("owner", owner, persistent=False)
            self.register_buffer("col_base_scale", s, persistent=False)
            self.register_buffer("col_scale", torch.zeros_like(s), persistent=False)
        else:
            ranks = {f.r for _, f in present}
            if len(ranks) != 1:
                raise ConfigError(f"{where}: space 'factors' needs equal ranks, got {sorted(ranks)}; "
                                  "use space 'delta' (exact for any ranks)")
            f0 = present[0][1]
            sA = torch.zeros(self.n, f0.r, f0.d_in)    # (n, r, d_in)
            sB = torch.zeros(self.n, f0.d_out, f0.r)   # (n, d_out, r), scale folded in
            for i, f in present:
                sA[i] = f.A.float()
                sB[i] = f.B.float() * float(f.scale)
            self.register_buffer("stack_A", sA, persistent=False)
            self.register_buffer("stack_B", sB, persistent=False)
            self.register_buffer("lora_A", torch.zeros(f0.r, f0.d_in), persistent=False)
            self.register_buffer("lora_B", torch.zeros(f0.d_out, f0.r), persistent=False)
            self.register_buffer("col_scale", torch.ones(f0.r), persistent=False)
        d_out, d_in = self.lora_B.shape[0], self.lora_A.shape[1]
        if (base.out_features, base.in_features) != (d_out, d_in):
            raise AdapterError(f"{where}: LoRA shape (d_out {d_out}, d_in {d_in}) does not match the base module "
                               f"(out {base.out_features}, in {base.in_features})")

    @torch.no_grad()
    def set_weights(self, w: torch.Tensor) -> None:
        """Swap in merge weights ``w`` (n,), in place."""
        w = w.to(torch.float32).to(self.lora_A.device)
        if self.space == "delta":
            self.col_scale.copy_(w[self.owner] * self.col_base_scale)
        else:
            self.lora_A.copy_(torch.einsum("n,nrd->rd", w, self.stack_A))
            self.lora_B.copy_(torch.einsum("n,nor->or", w, self.stack_B))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = F.linear(x.to(self.lora_A.dtype), self.lora_A) * self.col_scale   # (..., R)
        return y + F.linear(h, self.lora_B).to(y.dtype)                       # (..., d_out)


def module_union(records: Sequence[AdapterRecord]) -> list[str]:
    """Sorted union of the adapted module paths of ``records``."""
    return sorted({m for r in records for m in r.modules})


def wrap_for_search(model: nn.Module, records: Sequence[AdapterRecord], space: str) -> dict[str, HubLinear]:
    """Replace every module adapted by any of ``records`` with a :class:`HubLinear` (once).

    Returns module path -> wrapper. Base weights stay frozen and untouched.

    Raises:
        AdapterError: a module is missing from the model or its shape differs.
        ConfigError: ``space='factors'`` with unequal ranks.
    """
    device = next(model.parameters()).device
    wrappers: dict[str, HubLinear] = {}
    for m in module_union(records):
        names = ", ".join(r.name for r in records if m in r.modules)
        lin = base_linear(model, m, f"adapter(s) {names}")
        w = HubLinear(lin, [r.modules.get(m) for r in records], space, where=f"module {m} (adapters {names})").to(device)
        replace_module(model, m, w)
        wrappers[m] = w
    for p in model.parameters():
        p.requires_grad_(False)
    return wrappers


def set_weights(wrappers: dict[str, HubLinear], weights: Sequence[float] | np.ndarray) -> None:
    """Swap merge weights (n,) into every wrapper, in place."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    for mod in wrappers.values():
        mod.set_weights(w)


# ----------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------

def search_weights(objective: Callable[[np.ndarray], dict[str, float]], n: int, *, budget: int,
                   bounds: tuple[float, float] = (-1.5, 1.5), seed: int = 0, optimizer: str = "NGOpt",
                   init: float = 0.0, progress: bool = True,
                   on_eval: Callable[[int, np.ndarray, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Minimise ``objective(w)["loss"]`` over w ∈ [lo, hi]^n with a nevergrad optimiser.

    Ask/tell loop over exactly ``budget`` evaluations, seeded (the parametrization's random state),
    so the result is deterministic for a seed and a deterministic objective.

    Returns:
        ``{"weights": best evaluated w (list), "loss": its loss, "best_step": step index,
        "recommendation": nevergrad's recommendation (list), "evaluations": budget}``. The best
        evaluated candidate is returned (its loss was measured); the recommendation is recorded.

    Ranges of ``budget``, ``bounds`` and ``init`` are checked by
    :class:`~lorasoups.train.options.LoraHubOptions` before any model is loaded.

    Raises:
        ConfigError: unknown optimizer name.
    """
    import nevergrad as ng
    from tqdm.auto import tqdm

    lo, hi = float(bounds[0]), float(bounds[1])
    if optimizer not in ng.optimizers.registry:
        from ..registry import suggest

        raise ConfigError(f"unknown nevergrad optimizer {optimizer!r}{suggest(optimizer, list(ng.optimizers.registry))}")
    param = ng.p.Array(init=np.full(n, float(init)), lower=lo, upper=hi)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=1)
    best: dict[str, Any] = {"loss": math.inf}
    from ..progress import progress_enabled

    bar = tqdm(total=budget, desc="lorahub search", unit="cand", disable=not progress_enabled(progress))
    with warnings.catch_warnings():
        # scipy's COBYLA (one of NGOpt's sub-optimisers) warns about its own tolerance defaults
        warnings.filterwarnings("ignore", message="COBYLA: Invalid RHOEND")
        try:
            _loop(opt, objective, budget, best, bar, on_eval)
        finally:
            bar.close()
    if "weights" not in best:
        raise DataError(f"LoRA Hub: every one of the {budget} candidates gave a non-finite loss")
    rec = np.asarray(opt.provide_recommendation().value, dtype=np.float64)
    best["recommendation"] = rec.tolist()
    best["evaluations"] = budget
    return best


def _loop(opt: Any, objective: Callable[[np.ndarray], dict[str, float]], budget: int, best: dict[str, Any],
          bar: Any, on_eval: Callable[[int, np.ndarray, dict[str, float]], None] | None) -> None:
    """The ask / evaluate / tell loop of :func:`search_weights`; updates ``best`` in place."""
    for step in range(budget):
        cand = opt.ask()
        w = np.asarray(cand.value, dtype=np.float64)
        res = objective(w)
        loss = float(res["loss"])
        opt.tell(cand, loss if math.isfinite(loss) else 1e10)  # a diverged candidate is just bad
        if on_eval is not None:
            on_eval(step, w, res)
        if loss < best["loss"]:
            best.update({"loss": loss, "weights": w.tolist(), "best_step": step})
        bar.update(1)
        bar.set_postfix(loss=f"{res['loss']:.4f}", best=f"{best['loss']:.4f}")


def _few_shot_examples(data: Sequence[Any], tokenizer: Any, k: int, *, cutoff_len: int, seed: int,
                       data_dir: str | None, long_responses: str = "skip",
                       stats: dict | None = None) -> list[dict[str, list[int]]]:
    """K examples: from data specs via ``load_training_data`` (seeded; records whose response does
    not fit ``cutoff_len`` skipped or kept cut per ``long_responses``, counted into ``stats``), or
    given tokenised."""
    if not data:
        raise DataError("LoRA Hub needs few-shot data (--data SPEC ...)")
    if all(isinstance(d, dict) for d in data):
        exs = [{"input_ids": list(d["input_ids"]), "labels": list(d["labels"])} for d in data]
    else:
        from ..train.data import load_training_data

        td = load_training_data(list(data), tokenizer, cutoff_len=cutoff_len, max_samples=k, seed=seed,
                                data_dir=data_dir, long_responses=long_responses)
        exs = td.examples
        if stats is not None:
            stats.update({"sources": [x.as_dict() for x in td.sources], **td.cut_summary()})
        for line in td.cut_report():
            print(f"lorahub: data: {line}", flush=True)
    if len(exs) > k:
        idx = sorted(random.Random(seed).sample(range(len(exs)), k))
        exs = [exs[i] for i in idx]
    exs = [e for e in exs if any(t != IGNORE_INDEX for t in e["labels"][1:])]
    if not exs:
        raise DataError(f"LoRA Hub: no usable few-shot example (every example has no answer tokens) in {list(map(str, data))[:5]}")
    return exs


@register_method("lorahub", kind="search", space="delta", reference="Huang et al. 2023 (LoraHub)",
                 options=LoraHubOptions, stage="lorahub", order=2, title="LoRA Hub search")
def run_lorahub(base: str, adapters: Sequence[str | Path], data: Sequence[Any], out: str | Path, *,
                seed: int = 0, device: str = "auto", data_dir: str | None = None, overwrite: bool = False,
                allow_pickle: bool = False, progress: bool = True, **params: Any) -> Path:
    """LoRA Hub search for one weight per adapter; writes the merged adapter as a PEFT folder.

    Objective (Huang et al. 2023 §3.2): token-averaged cross-entropy (nats) of the answers of
    ``examples`` few-shot examples (the kit's :func:`lorasoups.train.loop.eval_loss`) + ``l1`` ·
    mean |w_i|, minimised by the nevergrad optimiser ``optimizer`` over ``budget`` candidates in
    ``bounds``, starting at w = ``init``. The result is built by the registered merge of its space
    (``concat`` for ``delta``, ``linear_factors`` for ``factors``).

    Args:
        base: base model (embedded name, HF folder or hub id); a causal LM.
        adapters: PEFT LoRA folders (n ≥ 1) of the same base model.
        data: data specs (``parse_data_spec`` syntax) read with ``load_training_data``, or
            already tokenised examples (dicts with ``input_ids`` and ``labels``).
        out: output folder: PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``),
            ``lorahub_weights.json`` (weights per adapter, losses, settings) and
            ``lorahub_trace.jsonl`` (one line per candidate: step, weights, loss, ce, penalty).
        seed: seeds the example choice and the optimiser; the result is deterministic for a seed.
        **params: :class:`~lorasoups.train.options.LoraHubOptions` (``space``: ``delta`` exact
            Σ w_i ΔW_i, rank Σ r_i, or ``factors`` (Σ w_i s_i B_i)(Σ w_i A_i), equal ranks, inexact;
            ``long_responses``: skip or keep cut the examples whose answer does not fit, counted in
            ``lorahub_weights.json`` (``data_stats``)), validated once here.

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: bad options. AdapterError: unreadable / incompatible adapters.
        DataError: no usable examples. FileExistsError: ``out`` exists without ``overwrite``.
    """
    from ..io.adapters import read_adapter, save_adapter_files
    from ..merge.driver import get_merge_method
    from ..models import load_base
    from ..paths import atomic_dir, check_not_input
    from ..train.loop import eval_loss, resolve_precision, unique_names
    from ..devices import resolve_device
    from ..provenance import provenance

    o = LoraHubOptions.parse({**params, "seed": seed}, where="lorahub")
    if not adapters:
        raise ConfigError("LoRA Hub needs at least one adapter (--adapters DIR ...)")
    out = Path(out)
    check_not_input(out, list(adapters))
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    t0 = time.time()
    records = [read_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    names = unique_names([r.name for r in records])
    for r, nm in zip(records, names):
        r.name = nm
    dev = resolve_device(device)
    prec, _ = resolve_precision(o.precision, dev)
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    data_stats: dict = {}
    exs = _few_shot_examples(data, tok, o.examples, cutoff_len=o.cutoff_len, seed=seed, data_dir=data_dir,
                             long_responses=o.long_responses, stats=data_stats)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    wrappers = wrap_for_search(model, records, o.space)
    model.eval()
    n = len(records)
    trace: list[dict[str, Any]] = []

    def objective(w: np.ndarray) -> dict[str, float]:
        set_weights(wrappers, w)
        ce = eval_loss(model, exs, pad_token_id=pad, batch_size=o.batch_size, precision=prec, device=dev)
        pen = l1_penalty(w, o.l1)
        return {"loss": ce + pen, "ce": ce, "penalty": pen}

    def on_eval(step: int, w: np.ndarray, res: dict[str, float]) -> None:
        trace.append({"step": step, "weights": [float(x) for x in w], **{k: float(v) for k, v in res.items()}})

    best = search_weights(objective, n, budget=o.budget, bounds=o.bounds, seed=seed, optimizer=o.optimizer,
                          init=o.init, progress=progress, on_eval=on_eval)
    weights = best["weights"]
    final = trace[best["best_step"]]
    # the base model's loss (w = 0) for reference: from the trace when the search evaluated it
    base_ce = next((t["ce"] for t in trace if not any(t["weights"])), None)
    if base_ce is None:
        base_ce = objective(np.zeros(n))["ce"]
    merge = get_merge_method(MERGE_OF_SPACE[o.space]).fn
    merged = {m: merge([r.modules.get(m) for r in records], weights) for m in module_union(records)}
    info = {
        "method": "lorahub",
        "reference": "Huang et al. 2023 (LoraHub)",
        "space": o.space,
        "adapters": [{"name": nm, "path": str(Path(a).resolve()), "weight": float(w)}
                     for nm, a, w in zip(names, adapters, weights)],
        "weights": [float(w) for w in weights],
        "loss": final["loss"], "ce": final["ce"], "penalty": final["penalty"],
        "base_ce": base_ce,
        "best_step": best["best_step"],
        "recommendation": best["recommendation"],
        "objective": "token-mean cross-entropy (nats) on the few-shot answers + l1 * mean|w|",
        "options": {**o.model_dump(), "bounds": [float(x) for x in o.bounds], "examples": len(exs),
                    "data": [d if isinstance(d, str) else str(d) for d in data] if not isinstance(data[0], dict)
                    else f"{len(data)} tokenised examples"},
        "data_stats": data_stats or None,
        "base_model": base,
        "seconds": round(time.time() - t0, 2),
        "provenance": provenance(),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_adapter_files(tmp, merged, base_model=base)
        (tmp / WEIGHTS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / TRACE_FILE).write_text("".join(json.dumps(t) + "\n" for t in trace), encoding="utf-8")
        from ..io.card import data_checksums, write_model_card

        write_model_card(tmp, base_model=base, method="lorahub", description=info["reference"],
                         adapters=names, weights=[float(x) for x in weights],
                         data=data_checksums(list(data) if not isinstance(data[0], dict) else [], data_dir),
                         metrics={"loss": final["loss"], "ce": final["ce"], "base_ce": base_ce})
    return out

