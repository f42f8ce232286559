"""The experiment runner behind ``lorasoups run``: a config's step graph (train skill LoRAs,
build every merge, evaluate every method on every task), a content-hash step cache with resume,
and the results folder (``results.json`` / ``.md`` / ``.csv`` / ``.png``, ``steps.jsonl``)."""

from .plan import Step, build_plan  # noqa: F401
from .runner import Runner, run_experiment  # noqa: F401
