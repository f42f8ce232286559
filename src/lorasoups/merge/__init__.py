"""Closed-form merges of LoRA adapters. Importing this package registers every merge method in
:data:`lorasoups.methods.METHODS` (one file per method).

Method contracts (the driver, :func:`lorasoups.merge.driver.merge_adapters`, calls them per module):

- ``space="concat"`` / ``"factors"`` / ``"aligned"``: ``fn(factors: list[LoraFactors | None],
  weights: list[float], *, params) -> LoraFactors`` (None = module missing in that adapter).
- ``space="delta"``: ``fn(deltas: Tensor (n, d_out, d_in) fp32, weights: Tensor (n,) fp32, *, params)
  -> Tensor (d_out, d_in) fp32`` (a missing module is a zero slice). A ``seed`` parameter receives a
  per-module seed derived from the user's seed and the module name.
- ``space="aligned"`` methods (``knots``, ``core_space``) rewrite the ΔW_i in a basis shared by the
  adapters, computed from the factors, run an inner merge there and return an exact LoraFactors.
"""

from . import (concat, core_space, dare_linear, dare_ties, knots, linear, linear_factors, magnitude_prune,  # noqa: F401
               task_arithmetic, ties)
