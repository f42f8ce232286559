"""Evaluation: task registry, generation with prefix caching, likelihood metrics, a sandbox for
model-written programs, and the ``evaluate`` runner behind ``lorasoups eval``.

Heavy modules (torch, transformers) are imported only by :mod:`lorasoups.eval.generate`,
:mod:`lorasoups.eval.model` and inside :func:`lorasoups.eval.runner.evaluate`.
"""
