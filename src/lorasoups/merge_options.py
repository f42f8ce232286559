"""Options of a merge run (keywords of :func:`lorasoups.merge.driver.merge_adapters` that are not
method options). A config's merge ``params`` may carry them next to the method's own options, and
``lorasoups merge`` takes them as flags. No torch import here, so the CLI parser stays light."""

from __future__ import annotations

from typing import Literal, Optional

from .spec import Spec, opt


class MergeRunOptions(Spec):
    weights: Optional[list[float]] = opt(None, "one weight per adapter, may be negative (none: 1/n each for linear, "
                                               "the average as in model soups; 1 each for the other methods)")
    rank: Optional[int] = opt(None, "SVD step: best rank-K approximation of the merged ΔW, written as a rank-K LoRA "
                                    "(none: the largest input rank for dense methods)", ge=1)
    svd: Literal["exact", "randomized"] = opt("exact", "SVD driver of the SVD step (randomized: much faster on large "
                                                       "matrices)")
    dtype: Literal["float32", "float16", "bfloat16"] = opt("float32", "dtype of the written adapter tensors "
                                                                      "(computation is fp32)")
    allow_different_base: bool = opt(False, "merge adapters whose base_model_name_or_path differ")
