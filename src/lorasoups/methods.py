"""The one registry of composition methods: closed-form merges, CAT, LoRA Hub, MoE, DATA-MIX.

A method is registered with :func:`register_method` together with its option spec
(:class:`lorasoups.spec.Spec`): config validation, CLI flags and ``lorasoups ls methods`` all read
that one declaration.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .registry import Registry, lazy_loader

KINDS = ("merge", "learned", "search", "routed", "trained", "reference")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method.

    Attributes:
        name: registry name (``ties``, ``cat``, ...).
        kind: ``merge`` (closed form), ``learned`` (CAT), ``search`` (LoRA Hub), ``routed`` (MoE),
            ``trained`` (DATA-MIX), ``reference`` (base model / single skill LoRA).
        space: where it computes: ``delta`` (full ΔW), ``concat`` (exact rank-sum factors),
            ``factors`` (A and B separately; inexact), ``aligned`` (factors rewritten in a basis
            shared by the adapters, merged there: KnOTS, Core Space), ``model``.
        fn: the implementing function (None for procedures run by a CLI command).
        params: keyword parameter -> default, read from ``fn``'s signature or given.
        reference: paper or source of the formula.
        description: one line.
        default_weights: per-adapter weights when none are given (closed-form merges): ``ones``
            (w_i = 1, a sum) or ``mean`` (w_i = 1/n, an average).
    """

    name: str
    kind: str
    space: str
    fn: Callable[..., Any] | None
    params: dict[str, Any] = field(default_factory=dict)
    reference: str = ""
    description: str = ""
    default_weights: str = "ones"
    options: Any = None  # the method's option spec (a lorasoups.spec.Spec subclass), when declared
    stage: str = ""  # the experiment stage its build belongs to (timing table); default: merge or its name
    order: int = 0  # builds run in increasing order (closed-form merges 0, DATA-MIX, a full training, last)
    title: str | Callable[[dict], str] = ""  # progress line verb, or a function of the step's params
    uses_adapters: bool = True  # False: trains from data alone (DATA-MIX) and does not wait for the skill LoRAs
    refers_to_inputs: bool = False  # its output points at the input adapters' files (MoE): key on their bytes
    resumable: bool = False  # accepts ``resume=True`` to continue an interrupted run from checkpoints
    # Config validation calls link(row, body=, rows=, seed=, path=) -> (row, problems) once every row is
    # read: a procedure that copies another row's settings (lora_cat_data: CAT's data and steps) fills
    # them into its own row here, so the two cannot drift and its content key follows them.
    link: Callable[..., tuple[Any, list[str]]] | None = None

    def step_title(self, params: dict) -> str:
        """The progress verb of a build step with ``params`` (``merge``, ``train CAT coefficients``, ...)."""
        t = self.title(params) if callable(self.title) else self.title
        return t or ("merge" if self.kind == "merge" else self.name)


METHODS: Registry[MethodInfo] = Registry("method")


def signature_params(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters of ``fn`` with their defaults (``inspect.Parameter.empty`` if none)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            out[p.name] = p.default
    return out


def register_method(name: str, *, kind: str, space: str, reference: str = "", description: str = "",
                    params: dict[str, Any] | None = None, default_weights: str = "ones", options: Any = None,
                    stage: str | None = None, order: int | None = None, title: str | Callable[[dict], str] = "",
                    uses_adapters: bool = True, refers_to_inputs: bool = False, resumable: bool = False,
                    link: Callable[..., tuple[Any, list[str]]] | None = None):
    """Decorator registering ``fn`` as method ``name``; parameters come from ``options`` (a
    :class:`lorasoups.spec.Spec`) or else its keyword-only args.

    A learned procedure (any kind but ``merge``) follows one contract, which the experiment runner
    calls with no per-method code: ``fn(base, adapters, data, out, *, seed, device, data_dir,
    overwrite, **params) -> Path`` with ``params`` validated by ``options``. ``stage`` (default: the
    name; ``merge`` for closed-form merges), ``order`` (default 0 for merges, 5 otherwise), ``title``,
    ``uses_adapters``, ``refers_to_inputs`` and ``resumable`` tell the runner how to plan, key and show it.
    ``link`` (see :attr:`MethodInfo.link`) lets config validation fill a row from the other rows.

    ``default_weights`` (``ones`` or ``mean``) sets the weights a closed-form merge uses when the
    caller gives none (see :attr:`MethodInfo.default_weights`).

    Raises:
        ValueError: unknown kind, unknown ``default_weights`` or duplicate name.
    """
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if default_weights not in ("ones", "mean"):
        raise ValueError(f"method {name!r}: default_weights must be 'ones' or 'mean', got {default_weights!r}")

    def deco(fn: Callable[..., Any] | None):
        if options is not None:
            ps = {k: f.default for k, f in options.model_fields.items()}
        else:
            ps = dict(params) if params is not None else (signature_params(fn) if fn is not None else {})
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0] if fn is not None else description
        st = stage or ("merge" if kind == "merge" else name)
        od = order if order is not None else (0 if kind == "merge" else 5)
        METHODS.register(name, MethodInfo(name, kind, space, fn, ps, reference, doc, default_weights, options,
                                          st, od, title, uses_adapters, refers_to_inputs, resumable, link))
        return fn

    return deco


# Modules whose import registers methods. Missing ones are skipped only while they are being built.
_METHOD_MODULES = [
    "lorasoups.merge",
    "lorasoups.train.cat",
    "lorasoups.search.lorahub",
    "lorasoups.moe",
    "lorasoups.train.sft",
    "lorasoups.train.controls",
]


def load_methods() -> Registry[MethodInfo]:
    """Import every method module once and return :data:`METHODS`."""
    import importlib

    for m in _METHOD_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise
    return METHODS


_ = lazy_loader  # re-exported for method modules
