"""A sandbox for model-written Python programs, with a pool of isolated worker processes.

Isolation, strongest available first (``Sandbox.info["isolation"]`` says which one was used):

* ``namespaces+uid`` (running as root): each worker is started by ``unshare --net --pid
  --mount-proc --fork`` — a new network namespace (only a downed loopback: no network at all), a new
  PID namespace whose init is the worker (so every process a program leaves behind is killed when
  the program ends, and the evaluator's processes are invisible), a private mount namespace with
  size-capped tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm`` — and then drops to uid/gid 65534
  (``nobody``) *before* any program runs, so the process-count limit binds (it does not bind root).
* ``userns`` (not root, unprivileged user namespaces allowed): the same namespaces inside a user
  namespace; programs run under the caller's own uid, where rlimits bind.
* ``process`` (no ``unshare``): a plain child process; sockets are still refused in-process (as
  root: ``process+uid``, the worker still drops to uid 65534).

Every program runs in a fresh process forked from a worker: a new session (process group), a fresh
temporary working directory (removed afterwards), stdin from ``/dev/null``, an empty environment,
the interpreter in isolated mode (``python -I``: no user site, no ``PYTHON*`` variables, no script
directory on ``sys.path``), resource limits (CPU seconds, address space, file size, open files,
processes, no core dumps), an audit hook that refuses every ``socket.*`` operation, a wall-clock
deadline after which the whole process group (and in namespace mode every process the program
started) is killed, and stdout/stderr capped. The worker runs under an interpreter the unprivileged
user may execute (``/usr/bin/python3`` by default; programs need only the standard library).

Results are data (:class:`ExecResult`), never exceptions: ``ok``, ``error``, ``timeout``, ``oom``.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import LorasoupsError

NOBODY = 65534
WORKER_SOURCE_PATH = Path(__file__).with_name("_sandbox_worker.py")
STATUSES = ("ok", "error", "timeout", "oom")


class SandboxError(LorasoupsError):
    """The sandbox itself cannot start (never raised for a misbehaving program)."""


@dataclass
class ExecResult:
    """Outcome of one program.

    Attributes:
        status: ``ok`` (ran to the end), ``error`` (raised, syntax error, non-zero exit, crash),
            ``timeout`` (wall-clock or CPU-time limit), ``oom`` (MemoryError under the
            address-space limit, or killed by SIGKILL).
        value: for a ``call``: ``{"type", "repr", "number" (float or None), "str"?}``.
        stdout, stderr: captured text, at most ``output_cap`` bytes each.
        stdout_truncated, stderr_truncated: True when more was written than kept.
        error: one line describing the failure.
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def number(self) -> float | None:
        """The returned value as a float, when the call returned a number."""
        return (self.value or {}).get("number")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> "ExecResult":
        names = {f for f in cls.__dataclass_fields__}
        status = reply.get("status") or "error"
        if status not in STATUSES:
            status = "error"
        kw = {k: v for k, v in reply.items() if k in names and k != "status"}
        return cls(status=status, **kw)


@dataclass
class Limits:
    """Per-program limits. ``timeout_s`` is wall-clock; CPU time is limited to ``ceil(timeout_s)+1``."""

    timeout_s: float = 5.0
    memory_mb: int = 1024
    fsize_mb: int = 16
    nofile: int = 64
    nproc: int = 64
    output_cap: int = 64 * 1024

    def request(self, timeout_s: float | None = None) -> dict[str, Any]:
        t = float(timeout_s if timeout_s is not None else self.timeout_s)
        return {"cpu_s": int(t) + 1, "as_bytes": self.memory_mb << 20, "fsize_bytes": self.fsize_mb << 20,
                "nofile": self.nofile, "nproc": self.nproc}


def _executable_by_others(path: Path) -> bool:
    """True when ``path`` and every folder above it are usable by an unprivileged user."""
    try:
        p = path.resolve()
        st = p.stat()
        if not (st.st_mode & stat.S_IXOTH) or not stat.S_ISREG(st.st_mode):
            return False
        for d in p.parents:
            if not (d.stat().st_mode & stat.S_IXOTH):
                return False
        return True
    except OSError:
        return False


def find_interpreter(drop_privileges: bool, explicit: str | None = None) -> str:
    """The Python interpreter for workers.

    When privileges are dropped the interpreter (and its folders) must be usable by ``nobody``:
    the system ``/usr/bin/python3`` first, then ``python3`` on PATH, then the running interpreter.

    Raises:
        SandboxError: ``explicit`` given but not executable, or no suitable interpreter found.
    """
    if explicit:
        p = Path(explicit)
        if not p.is_file() or not os.access(p, os.X_OK):
            raise SandboxError(f"sandbox interpreter {explicit} is not an executable file")
        if drop_privileges and not _executable_by_others(p):
            raise SandboxError(f"sandbox interpreter {explicit} is not executable by the unprivileged user "
                               f"(uid {NOBODY}); use a system interpreter such as /usr/bin/python3")
        return str(p)
    cands = ["/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or "", sys.executable]
    for c in cands:
        if not c:
            continue
        p = Path(c)
        if not p.is_file():
            continue
        if drop_privileges and not _executable_by_others(p):
            continue
        return str(p)
    raise SandboxError("no Python interpreter usable by the unprivileged sandbox user (uid 65534) was found; "
                       "looked at: " + ", ".join(c for c in cands if c) + ". Install the system python3 "
                       "(e.g. apt-get install python3) or pass interpreter=")


def _probe(cmd: list[str]) -> bool:
    try:
        r = subprocess.run(cmd + ["/bin/true"], capture_output=True, timeout=10, env={})
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_MODE_CACHE: dict[str, tuple[str, list[str]]] = {}


def choose_isolation(mode: str = "auto") -> tuple[str, list[str]]:
    """Pick the isolation mode and the command prefix that starts a worker in it.

    Args:
        mode: ``auto``, ``namespaces+uid``, ``userns`` or ``process``.

    Raises:
        SandboxError: an explicitly requested mode is not available here.
    """
    if mode in _MODE_CACHE:
        return _MODE_CACHE[mode]
    unshare = shutil.which("unshare") or ("/usr/bin/unshare" if Path("/usr/bin/unshare").exists() else None)
    ns = ["--net", "--pid", "--mount-proc", "--fork", "--kill-child", "--"]
    wanted = [mode] if mode != "auto" else (["namespaces+uid", "userns", "process"] if os.geteuid() == 0
                                           else ["userns", "process"])
    for m in wanted:
        if m == "namespaces+uid" and unshare and os.geteuid() == 0:
            pre = [unshare, *ns]
            if _probe(pre):
                _MODE_CACHE[mode] = (m, pre)
                return m, pre
        elif m == "userns" and unshare:
            pre = [unshare, "--user", "--map-root-user", *ns]
            if _probe(pre):
                _MODE_CACHE[mode] = (m, pre)
                return m, pre
        elif m == "process":
            _MODE_CACHE[mode] = (m, [])
            return m, []
    raise SandboxError(f"sandbox isolation {mode!r} is not available here (needs util-linux unshare"
                       + (" and root" if mode == "namespaces+uid" else "") + ")")


# The worker reads its own source as the first line of its stdin (keeps ``ps`` readable).
_BOOTSTRAP = ("import sys, json; exec(compile(json.loads(sys.stdin.readline()), "
              "'<lorasoups-sandbox-worker>', 'exec'))")


class _Worker:
    """One isolated worker process (see ``_sandbox_worker.py``); used by one thread at a time."""

    def __init__(self, cmd: list[str], source: str, start_timeout: float = 30.0):
        self._errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errf,
                                     env={}, cwd="/", start_new_session=True, close_fds=True)
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
        if not hello or not hello.get("ready"):
            self.kill()
            self._errf.seek(0)
            err = self._errf.read().decode("utf-8", "replace").strip()[-800:]
            why = (hello or {}).get("error") or err or "no reply"
            raise SandboxError(f"sandbox worker failed to start ({' '.join(cmd[:8])} ...): {why}")
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
        """Send one request; None if the worker died or missed ``deadline``."""
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self._readline(deadline)
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker's whole process group (in namespace mode the kernel then kills every
        process of its PID namespace)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.kill()
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

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


@dataclass
class Program:
    """A program to run: source ``code`` and an optional ``call`` expression (e.g. ``solution()``)
    whose value is returned in :attr:`ExecResult.value`."""

    code: str
    call: str | None = None
    timeout_s: float | None = None


class Sandbox:
    """A pool of isolated workers that run untrusted Python programs.

    Args:
        workers: pool size (default ``min(4, cpu_count)``); workers start lazily.
        limits: per-program :class:`Limits`.
        isolation: ``auto`` (strongest available), ``namespaces+uid``, ``userns``, ``process``.
        interpreter: worker interpreter (default: see :func:`find_interpreter`).
        tmpfs_mb: size of the private tmpfs mounts in namespace modes.

    Raises:
        SandboxError: the requested isolation or a usable interpreter is unavailable, or a worker
            cannot start.

    Use as a context manager (or call :meth:`close`) so workers are stopped.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None, isolation: str = "auto",
                 interpreter: str | None = None, tmpfs_mb: int = 256, block_sockets: bool = True):
        self.limits = limits or Limits()
        self.n_workers = max(1, int(workers or min(4, os.cpu_count() or 1)))
        self.mode, prefix = choose_isolation(isolation)
        # as root, programs always run as the unprivileged user (the process-count limit does not bind root)
        drop = os.geteuid() == 0 and self.mode in ("namespaces+uid", "process")
        if drop and self.mode == "process":
            self.mode = "process+uid"
        self.interpreter = find_interpreter(drop, interpreter)
        cfg: dict[str, Any] = {"tmpfs_mb": tmpfs_mb if not self.mode.startswith("process") else 0}
        if drop:
            cfg.update(uid=NOBODY, gid=NOBODY)
        self.block_sockets = block_sockets
        self._source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        self._cmd = [*prefix, self.interpreter, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._started = 0
        self._lock = threading.Lock()
        self._closed = False
        self._worker_info: dict[str, Any] | None = None

    # -- pool -------------------------------------------------------------------------------
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
                w = _Worker(self._cmd, self._source)
            except BaseException:
                with self._lock:
                    self._started -= 1
                raise
            with self._lock:
                self._all.append(w)
                self._worker_info = self._worker_info or w.info
            return w
        return self._idle.get()

    def _release(self, w: _Worker) -> None:
        self._idle.put(w)

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        nw = _Worker(self._cmd, self._source)
        with self._lock:
            if w in self._all:
                self._all.remove(w)
            self._all.append(nw)
        return nw

    @property
    def info(self) -> dict[str, Any]:
        """Isolation actually in force: mode, interpreter, worker uid, tmpfs mounts, limits."""
        if self._worker_info is None:
            w = self._acquire()
            self._release(w)
        wi = self._worker_info or {}
        return {"isolation": self.mode, "interpreter": self.interpreter, "uid": wi.get("uid"),
                "pid_namespace": bool(wi.get("ns_init")), "tmpfs": wi.get("tmpfs", []),
                "workers": self.n_workers, "limits": asdict(self.limits), "block_sockets": self.block_sockets}

    # -- running ----------------------------------------------------------------------------
    def run(self, code: str, call: str | None = None, timeout_s: float | None = None) -> ExecResult:
        """Run one program; see :class:`ExecResult`. Never raises for the program's behaviour."""
        t = float(timeout_s if timeout_s is not None else self.limits.timeout_s)
        req = {"code": code, "call": call, "timeout": t, "limits": self.limits.request(t),
               "output_cap": self.limits.output_cap, "block_sockets": self.block_sockets}
        w = self._acquire()
        t0 = time.monotonic()
        reply = w.request(req, t0 + t + 10.0)
        if reply is None:
            dead = not w.alive()
            w = self._replace(w)
            self._release(w)
            if dead:
                return ExecResult("error", error="sandbox worker died while running the program; restarted",
                                  wall_s=time.monotonic() - t0)
            return ExecResult("timeout", error="sandbox worker unresponsive; killed and restarted",
                              wall_s=time.monotonic() - t0)
        self._release(w)
        return ExecResult.from_reply(reply)

    def run_many(self, programs: Sequence[Program | str], progress: Any = None) -> list[ExecResult]:
        """Run programs concurrently on the pool; results in input order."""
        progs = [p if isinstance(p, Program) else Program(p) for p in programs]
        if not progs:
            return []
        out: list[ExecResult | None] = [None] * len(progs)

        def _one(i: int) -> None:
            p = progs[i]
            out[i] = self.run(p.code, p.call, p.timeout_s)
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


def run_program(code: str, call: str | None = None, timeout_s: float = 5.0, **sandbox_kw: Any) -> ExecResult:
    """Convenience: run one program in a one-worker sandbox (starts and stops a worker)."""
    with Sandbox(workers=1, limits=Limits(timeout_s=timeout_s), **sandbox_kw) as sb:
        return sb.run(code, call=call)


def code_execution_refusal(task_names: Iterable[str]) -> str:
    """The message given when tasks that execute model-written code are requested without
    permission."""
    names = ", ".join(sorted(task_names))
    return (f"task(s) {names} run model-written Python programs; pass --allow-code-execution "
            "(allow_code_execution=True) to run them in lorasoups' sandbox (separate process in its own "
            "network/PID namespaces, unprivileged user, CPU/memory/file/process limits, wall-clock timeout). "
            "Likelihood-only evaluation (--no-generate) needs no code execution.")
