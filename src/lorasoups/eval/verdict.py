"""What a sandboxed program is and what became of it: :class:`Program` (code, call, checks),
:class:`Limits`, :class:`ExecResult`, and :func:`verdict`, the host's judgement of a worker's raw
reply (the program side only reports values; the harness decides, :mod:`lorasoups.eval.checks`)."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .checks import Check, check_passes, describe_value

def clean_text(s: Any) -> Any:
    """``s`` with lone surrogates (and other unencodable code points) replaced, so it can be
    written as UTF-8; non-strings are returned unchanged."""
    if isinstance(s, str):
        return s.encode("utf-8", "replace").decode("utf-8")
    return s


@dataclass
class ExecResult:
    """Outcome of one program.

    Attributes:
        status: ``ok`` (ran to the end and every check held), ``error`` (raised, syntax error,
            early exit such as ``sys.exit``, a failed check, a crash or a malformed report),
            ``timeout`` (wall-clock or CPU-time limit), ``oom`` (MemoryError or killed).
        value: for a ``call``: ``{"type", "repr", "number" (float or None), "str"?}``; a number
            only for an exact ``int``/``float``/``bool`` (or Fraction/Decimal).
        stdout, stderr: captured text, at most ``output_cap`` bytes each.
        error: one line describing the failure; error_type: the exception's name
            (``AssertionError`` for a failed check, ``SystemExit`` for an early exit).
        checks_total, checks_passed: checks requested and checks the host found to hold.
        wall_s: seconds from fork to the end of clean-up.
    """

    status: str
    value: dict[str, Any] | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str | None = None
    error_type: str | None = None
    wall_s: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    checks_total: int = 0
    checks_passed: int = 0

    def __post_init__(self) -> None:
        for k in ("stdout", "stderr", "error", "error_type"):
            setattr(self, k, clean_text(getattr(self, k)))
        if self.value:
            self.value = {k: clean_text(v) for k, v in self.value.items()}

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def number(self) -> float | None:
        """The returned value as a float, when the call returned a number."""
        return (self.value or {}).get("number")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Limits:
    """Per-program limits. ``timeout_s`` is wall-clock; CPU time is limited to ``int(timeout_s)+1``.
    ``memory_mb`` and ``nproc`` bound the whole program tree where a cgroup is available (else
    ``memory_mb`` is per process and ``nproc`` at most ``FALLBACK_NPROC``); ``tmpfs_mb`` and
    ``tmpfs_inodes`` cap the program's fresh ``/tmp`` (and ``/dev/shm``)."""

    timeout_s: float = 5.0
    memory_mb: int = 1024
    fsize_mb: int = 16
    nofile: int = 64
    nproc: int = 64
    output_cap: int = 64 * 1024
    tmpfs_mb: int = 64
    tmpfs_inodes: int = 2048

    def request(self, timeout_s: float, cgroup: bool) -> dict[str, Any]:
        return {"cpu_s": int(timeout_s) + 1, "as_bytes": self.memory_mb << 20, "fsize_bytes": self.fsize_mb << 20,
                "nofile": self.nofile, "nproc": self.nproc if cgroup else min(self.nproc, FALLBACK_NPROC)}


FALLBACK_NPROC = 8


@dataclass
class Program:
    """A program to run: source ``code``, an optional ``call`` expression (e.g. ``solution()``)
    whose value is returned, and optional ``checks`` (``assert`` statements the harness runs
    after the program, see :mod:`lorasoups.eval.checks`)."""

    code: str
    call: str | None = None
    timeout_s: float | None = None
    checks: Sequence[str] | None = None


_REPORT_STAGES = ("program", "call", "checks", "done")


def _parse_report(text: str, n_checks: int) -> dict[str, Any] | None:
    """The program side's report if well-formed (exactly one JSON line of the expected shape)."""
    lines = text.split("\n")
    if len(lines) != 2 or lines[1] != "":
        return None
    try:
        rep = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(rep, dict) or rep.get("v") != 1 or rep.get("stage") not in _REPORT_STAGES:
        return None
    err, checks = rep.get("error"), rep.get("checks")
    if err is not None and not (isinstance(err, dict) and isinstance(err.get("type"), str)
                                and isinstance(err.get("msg"), str)):
        return None
    if (err is None) != (rep["stage"] == "done") or not isinstance(checks, list) or len(checks) > n_checks:
        return None
    if err is None and len(checks) != n_checks:
        return None
    if rep.get("value") is not None and not isinstance(rep["value"], dict):
        return None
    return rep


def verdict(reply: dict[str, Any], call: str | None, checks: Sequence[Check], timeout_s: float) -> ExecResult:
    """The host's verdict on one program from the worker's raw ``reply``."""
    base = {k: reply.get(k) for k in ("stdout", "stderr", "wall_s", "exit_code", "signal")}
    base = {k: v for k, v in base.items() if v is not None}
    base.update(stdout_truncated=bool(reply.get("stdout_truncated")),
                stderr_truncated=bool(reply.get("stderr_truncated")), checks_total=len(checks))
    sig = reply.get("signal")
    if reply.get("timed_out"):
        return ExecResult("timeout", error=f"wall-clock timeout after {timeout_s:.1f} s", **base)
    if sig == signal.SIGXCPU:
        return ExecResult("timeout", error="CPU-time limit exceeded", **base)
    report = reply.get("report") or ""
    if not report:
        if sig == signal.SIGKILL:
            return ExecResult("oom", error="killed (memory or process limit)", **base)
        if reply.get("exit_code") == 75:
            return ExecResult("error", error="sandbox confinement failed: " + str(reply.get("stderr", ""))[-300:],
                              **base)
        how = f"signal {sig}" if sig is not None else f"exit code {reply.get('exit_code')}"
        return ExecResult("error", error=f"program ended early ({how}) before the harness reported",
                          error_type="EarlyExit", **base)
    rep = _parse_report(report, len(checks)) if not reply.get("report_truncated") else None
    if rep is None:
        return ExecResult("error", error="malformed report from the program side", error_type="MalformedReport",
                          **base)
    if rep["error"] is not None:
        et, msg = rep["error"]["type"][:100], rep["error"]["msg"][:2000]
        status = "oom" if et == "MemoryError" else "error"
        if rep["stage"] == "checks":
            msg = f"check {len(rep['checks']) + 1} ({checks[len(rep['checks'])].source}) raised {msg}"
        return ExecResult(status, error=msg, error_type=et, **base)
    value = describe_value(rep["value"]) if call else None
    for i, (c, vals) in enumerate(zip(checks, rep["checks"])):
        ok, why = check_passes(c, vals)
        if not ok:
            return ExecResult("error", value=value, error=f"check {i + 1} failed: {c.source.strip()[:300]}: {why}",
                              error_type="AssertionError", checks_passed=i, **base)
    return ExecResult("ok", value=value, checks_passed=len(checks), **base)
