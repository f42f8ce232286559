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
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AdapterError, ConfigError, DataError
from ..methods import register_method
from ..types import AdapterRecord, LoraFactors
from ..train.loss import lm_loss_sum  # noqa: F401  (re-exported: one LM loss for every trainer)
from ..wrap import LinearWrapper, base_linear, replace_module

SPACES = ("delta", "factors")
WEIGHTS_FILE = "lorahub_weights.json"
TRACE_FILE = "lorahub_trace.jsonl"
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------
# Pure merge functions
# ----------------------------------------------------------------------------------------------

def factor_space_merge(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> LoraFactors:
    """The original LoraHub merge of one module: A' = Σ_i w_i A_i, B' = Σ_i w_i s_i B_i.

    Args:
        factors: per adapter the module's factors, A_i (r, d_in), B_i (d_out, r), scale s_i; ``None``
            where the adapter does not adapt this module (treated as zero factors).
        weights: one weight per entry of ``factors``.

    Returns:
        LoraFactors with A' (r, d_in), B' (d_out, r) in fp32 and scale 1 (s_i folded into B_i, so a
        one-hot weight vector reproduces that adapter's ΔW exactly). ΔW' = B'A' is NOT
        Σ w_i ΔW_i (cross terms B_i A_j; see the module docstring).

    Raises:
        ConfigError: lengths differ, no adapter has the module, or ranks / shapes differ (the
            factor space needs equal ranks).
    """
    if len(factors) != len(weights):
        raise ConfigError(f"factor_space_merge: {len(factors)} factor sets but {len(weights)} weights")
    present = [(f, float(w)) for f, w in zip(factors, weights) if f is not None]
    if not present:
        raise ConfigError("factor_space_merge: no adapter has this module")
    shapes = {(f.r, f.d_in, f.d_out) for f, _ in present}
    if len(shapes) != 1:
        raise ConfigError(f"factor_space_merge: the factor space needs equal ranks and shapes, got (r, d_in, d_out) "
                          f"{sorted(shapes)}; use space='delta' (exact for any ranks)")
    f0 = present[0][0]
    A = torch.zeros(f0.r, f0.d_in, dtype=torch.float32)   # (r, d_in)
    B = torch.zeros(f0.d_out, f0.r, dtype=torch.float32)  # (d_out, r)
    for f, w in present:
        A += w * f.A.float()
        B += (w * float(f.scale)) * f.B.float()
    return LoraFactors(A=A, B=B, scale=1.0)


def delta_space_merge(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> LoraFactors:
    """Exact Σ_i w_i ΔW_i of one module as a rank-sum LoRA (``concat_factors``; ``None`` skipped).

    Returns LoraFactors with A' (Σr_i, d_in), B' (d_out, Σr_i), scale 1.
    """
    from ..merge.concat import concat_factors

    return concat_factors(list(factors), [float(w) for w in weights])


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
        if space not in SPACES:
            raise ConfigError(f"unknown LoRA Hub space {space!r}; use one of {', '.join(SPACES)}")
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
# Objective
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def mean_ce(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Token-averaged cross-entropy (nats / token) over all scored tokens of ``batches``."""
    total, count = 0.0, 0
    for b in batches:
        s, n = lm_loss_sum(model, b)
        total += float(s)
        count += n
    if count == 0:
        raise DataError("the few-shot examples have no scored (label) tokens")
    return total / count


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

    Raises:
        ConfigError: bad budget, bounds or optimizer name.
    """
    import nevergrad as ng
    from tqdm.auto import tqdm

    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ConfigError(f"LoRA Hub bounds must satisfy lower < upper, got {lo} {hi}")
    if not lo <= init <= hi:
        raise ConfigError(f"LoRA Hub init {init} is outside the bounds [{lo}, {hi}]")
    if budget < 1:
        raise ConfigError(f"LoRA Hub budget must be at least 1, got {budget}")
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
    if k < 1:
        raise ConfigError(f"LoRA Hub needs at least 1 few-shot example, got examples={k}")
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


@register_method("lorahub", kind="search", space="delta", reference="Huang et al. 2023 (LoraHub)")
def run_lorahub(base: str, adapters: Sequence[str | Path], data: Sequence[Any], out: str | Path, *,
                budget: int = 40, space: str = "delta", l1: float = 0.05,
                bounds: tuple[float, float] = (-1.5, 1.5), examples: int = 5, seed: int = 0,
                optimizer: str = "NGOpt", init: float = 0.0, batch_size: int = 4, cutoff_len: int = 512,
                long_responses: str = "skip", data_dir: str | None = None, device: str = "auto", overwrite: bool = False,
                allow_pickle: bool = False, progress: bool = True) -> Path:
    """LoRA Hub search for one weight per adapter; writes the merged adapter as a PEFT folder.

    Objective (Huang et al. 2023 §3.2): token-averaged cross-entropy (nats) of the answers of
    ``examples`` few-shot examples + ``l1`` · mean |w_i|, minimised by the nevergrad optimiser
    ``optimizer`` over ``budget`` candidates in ``bounds``, starting at w = ``init``.

    Args:
        base: base model (embedded name, HF folder or hub id); a causal LM.
        adapters: PEFT LoRA folders (n ≥ 1) of the same base model.
        data: data specs (``parse_data_spec`` syntax) read with ``load_training_examples``, or
            already tokenised examples (dicts with ``input_ids`` and ``labels``).
        out: output folder: PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``),
            ``lorahub_weights.json`` (weights per adapter, losses, settings) and
            ``lorahub_trace.jsonl`` (one line per candidate: step, weights, loss, ce, penalty).
        space: ``delta`` (exact Σ w_i ΔW_i, rank Σ r_i) or ``factors`` ((Σ w_i s_i B_i)(Σ w_i A_i),
            equal ranks needed, inexact; see module docstring).
        seed: seeds the example choice and the optimiser; the result is deterministic for a seed.
        long_responses: ``skip`` (default) examples whose answer does not fit ``cutoff_len``, or
            ``keep`` them cut; counted in ``lorahub_weights.json`` (``data_stats``) and printed.

    Returns:
        ``Path(out)``.

    Raises:
        ConfigError: bad options. AdapterError: unreadable / incompatible adapters.
        DataError: no usable examples. FileExistsError: ``out`` exists without ``overwrite``.
    """
    from ..io.adapters import read_adapter, save_adapter_files
    from ..models import load_base
    from ..paths import atomic_dir, check_not_input
    from ..provenance import provenance

    if space not in SPACES:
        from ..registry import suggest

        raise ConfigError(f"unknown LoRA Hub space {space!r}{suggest(space, SPACES)}; use one of {', '.join(SPACES)}")
    if not adapters:
        raise ConfigError("LoRA Hub needs at least one adapter (--adapters DIR ...)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    out = Path(out)
    check_not_input(out, list(adapters))
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    t0 = time.time()
    records = [read_adapter(a, allow_pickle=allow_pickle) for a in adapters]
    names = _unique_names(records)
    for r, nm in zip(records, names):
        r.name = nm
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device
    model, tok = load_base(base, device=dev)
    from ..io.attach import align_to_model

    # every tensor must find its module of this model (known key variants mapped), or refuse
    records = [align_to_model(r, model) for r in records]
    data_stats: dict = {}
    exs = _few_shot_examples(data, tok, examples, cutoff_len=cutoff_len, seed=seed, data_dir=data_dir,
                             long_responses=long_responses, stats=data_stats)
    from ..train.data import collate

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = [{k: v.to(dev) for k, v in collate(exs[i:i + batch_size], pad).items()}
               for i in range(0, len(exs), batch_size)]
    wrappers = wrap_for_search(model, records, space)
    model.eval()
    n = len(records)
    trace: list[dict[str, Any]] = []

    def objective(w: np.ndarray) -> dict[str, float]:
        set_weights(wrappers, w)
        ce = mean_ce(model, batches)
        pen = l1_penalty(w, l1)
        return {"loss": ce + pen, "ce": ce, "penalty": pen}

    def on_eval(step: int, w: np.ndarray, res: dict[str, float]) -> None:
        trace.append({"step": step, "weights": [float(x) for x in w], **{k: float(v) for k, v in res.items()}})

    best = search_weights(objective, n, budget=budget, bounds=bounds, seed=seed, optimizer=optimizer, init=init,
                          progress=progress, on_eval=on_eval)
    weights = best["weights"]
    final = trace[best["best_step"]]
    # the base model's loss (w = 0) for reference: from the trace when the search evaluated it
    base_ce = next((t["ce"] for t in trace if not any(t["weights"])), None)
    if base_ce is None:
        base_ce = objective(np.zeros(n))["ce"]
    merge = delta_space_merge if space == "delta" else factor_space_merge
    merged = {m: merge([r.modules.get(m) for r in records], weights) for m in module_union(records)}
    info = {
        "method": "lorahub",
        "reference": "Huang et al. 2023 (LoraHub)",
        "space": space,
        "adapters": [{"name": nm, "path": str(Path(a).resolve()), "weight": float(w)}
                     for nm, a, w in zip(names, adapters, weights)],
        "weights": [float(w) for w in weights],
        "loss": final["loss"], "ce": final["ce"], "penalty": final["penalty"],
        "base_ce": base_ce,
        "best_step": best["best_step"],
        "recommendation": best["recommendation"],
        "objective": "token-mean cross-entropy (nats) on the few-shot answers + l1 * mean|w|",
        "options": {"budget": budget, "l1": l1, "bounds": [float(bounds[0]), float(bounds[1])],
                    "examples": len(exs), "seed": seed, "optimizer": optimizer, "init": init,
                    "batch_size": batch_size, "cutoff_len": cutoff_len, "long_responses": long_responses,
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


def _unique_names(records: Sequence[AdapterRecord]) -> list[str]:
    """Display names of adapters (folder names), made unique with a ``#i`` suffix."""
    names = [r.name for r in records]
    return [nm if names.count(nm) == 1 else f"{nm}#{i}" for i, nm in enumerate(names)]
