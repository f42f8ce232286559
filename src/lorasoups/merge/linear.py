"""``linear``: Σ_i w_i ΔW_i, written exactly as a rank-sum LoRA; by default the average (w_i = 1/n).

A model soup (Wortsman et al. 2022, "Model soups": the uniform soup averages the fine-tuned
weights) applied to LoRA updates: with the default weights w_i = 1/n the merged update is the mean
of the adapters' ΔW_i, as in mergekit's ``linear`` method. Pass weights to get any weighted sum;
``task_arithmetic`` is the method whose default is the plain sum (w_i = 1).

Because the sum of LoRA updates is itself a LoRA of rank Σ r_i (see :mod:`.concat`), the linear
merge needs no dense ΔW and no approximation: there are no cross terms w_i w_j B_i A_j, and negative
weights (task negation) work (Ilharco et al. 2023, "Editing models with task arithmetic", sec. 2).
"""

from __future__ import annotations

from typing import Sequence

from ..methods import register_method
from ..spec import NoOptions
from ..types import LoraFactors
from .concat import concat_factors


@register_method("linear", options=NoOptions, kind="merge", space="concat", default_weights="mean",
                 reference="Wortsman et al. 2022 (model soups); Ilharco et al. 2023 (task arithmetic)",
                 description="Σ w_i ΔW_i, exact rank-sum LoRA; default w_i = 1/n (the average, a model soup)")
def linear(factors: Sequence[LoraFactors | None], weights: Sequence[float]) -> LoraFactors:
    """Weighted sum of LoRA updates, exact.

    The weights are used as given; the merge driver (:func:`lorasoups.merge.driver.merge_adapters`)
    passes w_i = 1/n when the caller gives none, so the default result is the average of the ΔW_i.

    Args:
        factors: per adapter A_i (r_i, d_in), B_i (d_out, r_i), scale s_i; None = module missing
            in that adapter (contributes zero).
        weights: w_i, one float per adapter (any sign).

    Returns:
        LoraFactors of rank Σ r_i (fp32, scale 1) with ``delta()`` = Σ_i w_i s_i B_i A_i.

    Raises:
        ValueError: see :func:`lorasoups.merge.concat.concat_factors`.
    """
    return concat_factors(factors, weights)
