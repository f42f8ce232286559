"""``task_arithmetic``: λ Σ_i w_i ΔW_i (Ilharco et al. 2023, eq. 1, with task vectors ΔW_i).

Exact like :mod:`.linear`: the result is the rank-sum LoRA with every weight multiplied by λ.
Unlike ``linear`` (default: the average), the default weights are w_i = 1: task vectors are added.
"""

from __future__ import annotations

from typing import Sequence

from ..methods import register_method
from ..spec import Spec, opt
from ..types import LoraFactors
from .concat import concat_factors


class TaskArithmeticOptions(Spec):
    scaling_coef: float = opt(1.0, "λ, multiplies the weighted sum (negative values negate it); finite")


@register_method("task_arithmetic", kind="merge", space="concat", default_weights="ones", options=TaskArithmeticOptions,
                 reference="Ilharco et al. 2023 (Editing models with task arithmetic)",
                 description="λ Σ w_i ΔW_i (λ = scaling_coef), exact rank-sum LoRA; default w_i = 1 (the sum)")
def task_arithmetic(factors: Sequence[LoraFactors | None], weights: Sequence[float], *,
                    scaling_coef: float = 1.0) -> LoraFactors:
    """Task arithmetic: the sum of (weighted) task vectors scaled by λ.

    Args:
        factors: per adapter A_i (r_i, d_in), B_i (d_out, r_i), scale s_i; None = missing module.
        weights: w_i per adapter (default 1 each in the driver).
        scaling_coef: λ, a finite float (negative values negate the sum; checked by
            :class:`TaskArithmeticOptions` when called through the driver).

    Returns:
        Rank-Σr_i LoRA (fp32, scale 1) with ``delta()`` = λ Σ_i w_i ΔW_i.
    """
    return concat_factors(factors, [scaling_coef * float(w) for w in weights])
