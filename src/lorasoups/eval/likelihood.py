"""Teacher-forced likelihood metrics, for every task whose items have a gold response:

* ``nll_gold``: mean per-token negative log-likelihood (nats/token) of the item's gold response
  after the item's prompt (:func:`lorasoups.prompts.encode_pair` ids: response + end-of-turn
  token, prompt tokens masked);
* ``nll_control``: the same for a *mismatched* gold response — another item's, chosen by a fixed
  derangement (item ``i`` takes the first item ``(i + k) mod n``, ``k = n//2, n//2+1, ...``, whose
  gold response differs from item ``i``'s);
* ``nll_gap`` = ``nll_control - nll_gold`` per item (positive: the model prefers this item's own
  answer, i.e. knows the item and not only the domain's style); ``gold_preferred`` = share of
  items with ``nll_gold < nll_control``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from ..progress import bar as _bar
from .registry import Item


def derangement(golds: Sequence[str | None]) -> list[int | None]:
    """For each item, the index of another item with a different gold response (deterministic).

    Item ``i`` takes the first ``j = (i + k) mod n`` for ``k = max(1, n//2), ...`` with
    ``golds[j] != golds[i]`` (and ``golds[j]`` not None); None when no such item exists.
    """
    n = len(golds)
    out: list[int | None] = []
    for i in range(n):
        pick = None
        if golds[i] is not None:
            start = max(1, n // 2)
            for k in range(start, start + n):
                j = (i + k) % n
                if j != i and golds[j] is not None and golds[j] != golds[i]:
                    pick = j
                    break
        out.append(pick)
    return out


def likelihood_scores(generator: Any, prompts: Sequence[str], items: Sequence[Item], *,
                      progress: bool | None = False, desc: str = "likelihood") -> list[dict[str, Any]]:
    """Per item: gold and control NLLs and their gap (see the module docstring).

    ``progress``: a bar over the scored (prompt, response) pairs (:func:`lorasoups.progress.bar`;
    False: none, None: on a terminal).

    Returns one dict per item: ``{"nll_gold", "nll_control", "nll_gap", "gold_preferred",
    "control_id", "n_tokens_gold"}`` (None values where the item has no gold response).
    """
    golds = [it.gold_text for it in items]
    ctrl = derangement(golds)
    pairs_p, pairs_r, owners = [], [], []
    for i, (p, it) in enumerate(zip(prompts, items)):
        if it.gold_text is None:
            continue
        pairs_p.append(p)
        pairs_r.append(it.gold_text)
        owners.append((i, "gold"))
        if ctrl[i] is not None:
            pairs_p.append(p)
            pairs_r.append(items[ctrl[i]].gold_text)
            owners.append((i, "control"))
    with _bar(len(pairs_p), desc, progress=progress, unit="pair") as pb, bar_per_batch(generator, pb):
        res = generator.nll(pairs_p, pairs_r) if pairs_p else []
    out: list[dict[str, Any]] = [{"nll_gold": None, "nll_control": None, "nll_gap": None, "gold_preferred": None,
                                  "control_id": None, "n_tokens_gold": None} for _ in items]
    for (i, which), r in zip(owners, res):
        if which == "gold":
            out[i]["nll_gold"], out[i]["n_tokens_gold"] = r["nll"], r["n_tokens"]
        else:
            out[i]["nll_control"] = r["nll"]
            out[i]["control_id"] = items[ctrl[i]].id
    for d in out:
        if d["nll_gold"] is not None and d["nll_control"] is not None:
            d["nll_gap"] = d["nll_control"] - d["nll_gold"]
            d["gold_preferred"] = float(d["nll_gold"] < d["nll_control"])
    return out


@contextlib.contextmanager
def bar_per_batch(generator: Any, pb: Any) -> Iterator[None]:
    """Route the generator's per-batch hook (``on_batch(n_rows)``) to bar ``pb`` for the duration;
    the bar is completed at the end (backends without the hook jump to 100%)."""
    had = hasattr(generator, "on_batch")
    old = getattr(generator, "on_batch", None)
    hooked = False
    if not getattr(pb, "disable", True):
        try:
            generator.on_batch = pb.update
            hooked = True
        except AttributeError:  # a generator that takes no new attributes
            pass
    try:
        yield
        if pb.total is not None and pb.n < pb.total:
            pb.update(pb.total - pb.n)
    finally:
        if hooked:
            if had:
                generator.on_batch = old
            else:
                with contextlib.suppress(AttributeError):
                    del generator.on_batch
