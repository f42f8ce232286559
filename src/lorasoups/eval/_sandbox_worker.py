"""Sandbox worker: runs inside a bubblewrap sandbox and runs one program at a time.

This file is NOT imported by lorasoups. :mod:`lorasoups.eval.sandbox` starts
``bwrap ... /usr/bin/python3 -I -c <bootstrap> <json config>`` and sends this file's text as the
first line of the worker's stdin. It uses the standard library only (it runs under the system
interpreter). Protocol: one JSON object per line on stdin (requests) and stdout (replies); the first
line written is a ``{"ready": ...}`` report.

Per program (``ns`` mode) the worker clones the program process ``P`` into new mount, IPC, UTS and
PID namespaces (``P`` is init of its PID namespace). ``P`` mounts a
fresh size- and inode-capped tmpfs on ``/tmp`` and ``/dev/shm`` and a fresh ``/proc`` (or hides
``/proc``), drops to uid/gid 65534, enters a new user namespace (fresh user keyring), joins a new
session keyring, drops every capability, sets ``no_new_privs`` and the rlimits, and only then runs
the program. When ``P`` ends, the kernel kills every process of its PID namespace, and its mounts
and IPC objects disappear with their namespaces. The worker itself is never reachable: it is not in
the program's PID namespace and runs under another uid.

The program's side reports one JSON line on fd 3: what raised where, the encoded value of the call
and the encoded operands of each check. The host validates it and decides the verdict; nothing here
is trusted by the host.
"""

import collections
import ctypes
import json
import os
import platform
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

CFG = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
NS = bool(CFG.get("ns"))
RESULT_FD = 3
NOBODY = 65534
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def _mount(src, target, fstype, flags, data=None):
    _check(LIBC.mount(src.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), "mount %s" % target)


def _drop_caps():
    """Empty effective, permitted and inheritable capability sets (capset, version 3)."""
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(LIBC.capset(hdr, data), "capset")


def _set_limits(lim):
    def _set(which, soft):
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, soft))
        except (ValueError, OSError):
            pass

    _set(resource.RLIMIT_CPU, int(lim["cpu_s"]))
    _set(resource.RLIMIT_AS, int(lim["as_bytes"]))
    _set(resource.RLIMIT_FSIZE, int(lim["fsize_bytes"]))
    _set(resource.RLIMIT_NOFILE, int(lim["nofile"]))
    _set(resource.RLIMIT_NPROC, int(lim["nproc"]))
    _set(resource.RLIMIT_CORE, 0)
    _set(resource.RLIMIT_MSGQUEUE, 0)


def _confine(req, workdir):
    """In the program process (``P``), before any program code runs."""
    if NS:
        _mount("none", "/", None, MS_REC | MS_PRIVATE)
        opts = "size=%dm,nr_inodes=%d,mode=1777" % (int(req["tmpfs_mb"]), int(req["tmpfs_inodes"]))
        for d in ("/tmp", "/dev/shm"):
            if os.path.isdir(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        if CFG.get("fresh_proc"):
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        proc_self = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
        if not CFG.get("fresh_proc"):  # a new /proc cannot be mounted here: hide the worker's
            _mount("tmpfs", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,nr_inodes=4,mode=555")
        if os.geteuid() == 0 and CFG.get("drop_uid"):
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        outer_uid, outer_gid = os.geteuid(), os.getegid()
        LIBC.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: the maps below are ours to write
        _check(LIBC.unshare(CLONE_NEWUSER), "unshare(user)")
        for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (NOBODY, outer_uid)),
                           ("gid_map", "%d %d 1" % (NOBODY, outer_gid))):
            fd = os.open(name, os.O_WRONLY, dir_fd=proc_self)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        os.close(proc_self)
        if SYS_KEYCTL is not None:
            LIBC.syscall(SYS_KEYCTL, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING: a new anonymous one
        _drop_caps()
        os.chdir("/tmp")
    else:
        os.chdir(workdir)
    LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _set_limits(req["limits"])
    os.umask(0o077)


# --- the program's side: run the code, the call and the checks; report encoded data ----------
_type, _len, _repr, _isinstance = type, len, repr, isinstance
_SCALARS = (type(None), bool, int, float, str, bytes, complex)
_DICTS = (dict, collections.Counter, collections.OrderedDict, collections.defaultdict)  # exact types only


def _encode(v, depth=0, budget=None):
    """Exact built-in values as tagged JSON; anything else as ``{"t": "other"}``."""
    budget = budget if budget is not None else [20000]
    budget[0] -= 1
    t = _type(v)
    if budget[0] < 0 or depth > 30:
        return {"t": "other", "type": "too large", "repr": ""}
    if t is type(None):
        return {"t": "none"}
    if t is bool:
        return {"t": "bool", "v": v}
    if t is int:
        try:
            return {"t": "int", "v": int.__repr__(v)}
        except ValueError:
            return {"t": "other", "type": "int", "repr": "<int too large>"}
    if t is float:
        return {"t": "float", "v": float.__repr__(v)}
    if t is complex:
        return {"t": "complex", "v": [float.__repr__(v.real), float.__repr__(v.imag)]}
    if t is str:
        return {"t": "str", "v": v[:100000]}
    if t is bytes:
        return {"t": "bytes", "v": v[:100000].hex()}
    if t in (list, tuple, set, frozenset):
        return {"t": t.__name__, "v": [_encode(x, depth + 1, budget) for x in (sorted(v, key=_sortkey)
                                                                            if t in (set, frozenset) else v)]}
    if t in _DICTS:
        return {"t": "dict", "v": [[_encode(k, depth + 1, budget), _encode(x, depth + 1, budget)]
                                   for k, x in dict.items(v)]}
    if t.__module__ in ("fractions", "decimal") and t.__name__ in ("Fraction", "Decimal"):
        try:
            return {"t": "float", "v": float.__repr__(float(v)), "type": t.__name__}
        except (ValueError, OverflowError, TypeError):
            pass
    try:
        r = _repr(v)[:2000]
    except BaseException:
        r = "<unrepresentable>"
    return {"t": "other", "type": str(getattr(t, "__name__", "?"))[:100], "repr": r}


def _sortkey(x):
    return (_type(x).__name__, _repr(x) if _type(x) in _SCALARS else "")


def _err(e):
    try:
        msg = "%s: %s" % (_type(e).__name__, e)
    except BaseException:
        msg = _type(e).__name__
    return {"type": _type(e).__name__, "msg": msg[:2000]}


def program_main(req):
    """Runs the program in this process; returns the report (never raises)."""
    rep = {"v": 1, "stage": "program", "error": None, "value": None, "checks": []}
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(req["code"], "<program>", "exec"), g)
        if req.get("call"):
            rep["stage"] = "call"
            rep["value"] = _encode(eval(compile(req["call"], "<call>", "eval"), g))
        rep["stage"] = "checks"
        for exprs in req.get("checks") or []:
            rep["checks"].append([_encode(eval(compile(x, "<check>", "eval"), g)) for x in exprs])
        rep["stage"] = "done"
    except BaseException as e:  # noqa: B902 - SystemExit included: an early exit is a failure
        rep["error"] = _err(e)
    return rep


def child_main(req, out_w, err_w, res_w, workdir):
    """``P``: confine, run, report on fd 3; never returns."""
    code = 70
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, RESULT_FD)
        os.closerange(RESULT_FD + 1, 65536)
        for s in (signal.SIGXFSZ,):
            signal.signal(s, signal.SIG_IGN)  # an over-limit write fails with EFBIG
        for s in (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        try:
            _confine(req, workdir)
        except BaseException as e:
            os.write(2, ("sandbox: confinement failed: %s\n" % (e,)).encode())
            os._exit(75)
        os.environ.clear()
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False, errors="replace")
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
        sys.argv = ["program"]
        sys.path[:] = [p for p in sys.path if p and "-packages" not in p]
        me = os.getpid()
        rep = program_main(req)
        if os.getpid() != me:  # a process the program forked: only the program process reports
            os._exit(0)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
        try:
            data = json.dumps(rep).encode() + b"\n"
        except BaseException:
            data = b'{"v": 1, "stage": "report", "error": {"type": "ValueError", "msg": "unencodable"}}\n'
        os.write(RESULT_FD, data)
        code = 0
    except MemoryError:
        code = 72
    except BaseException:
        code = 70
    os._exit(code)


def _clone_into_namespaces():
    """``fork()`` into new PID, mount, IPC and UTS namespaces in one ``clone`` (the child is init
    of its PID namespace). Returns the child's pid in the parent, 0 in the child."""
    flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID | int(signal.SIGCHLD)
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = LIBC.syscall(SYS_CLONE, ctypes.c_ulong(flags), None, None, None, None)
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, "clone: %s" % os.strerror(err))
    return pid


def _read_some(fd, buf, cap, counter):
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not chunk:
        return False
    counter[0] += len(chunk)
    room = cap - len(buf)
    if room > 0:
        buf.extend(chunk[:room])
    return True


def run_one(req):
    t0 = time.monotonic()
    timeout = float(req.get("timeout", 5.0))
    cap = int(req.get("output_cap", 65536))
    workdir = None if NS else tempfile.mkdtemp(prefix="run-", dir=CFG.get("tmp_root"))
    pipes = [os.pipe() for _ in range(3)]
    pid = _clone_into_namespaces() if NS else os.fork()
    if pid == 0:
        for r, _ in pipes:
            os.close(r)
        if not NS:
            os.setpgid(0, 0)
        child_main(req, *[w for _, w in pipes], workdir)
    for _, w in pipes:
        os.close(w)
    fds = [r for r, _ in pipes]
    for fd in fds:
        os.set_blocking(fd, False)
    bufs = [bytearray() for _ in fds]
    caps = [cap, cap, 1 << 22]
    counts = [[0] for _ in fds]
    open_fds = set(fds)
    pidfd = os.pidfd_open(pid)
    deadline = t0 + timeout
    timed_out, exit_status = False, None
    while True:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        ready, _, _ = select.select(list(open_fds) + [pidfd], [], [], deadline - now)
        for fd in ready:
            if fd != pidfd:
                i = fds.index(fd)
                if not _read_some(fd, bufs[i], caps[i], counts[i]):
                    open_fds.discard(fd)
        p, st = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            exit_status = st
            break
    os.close(pidfd)
    if exit_status is None:
        # ns mode: the program is init of its PID namespace, its death takes every process with it
        for kill in (os.kill,) if NS else (os.killpg,):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
    elif not NS:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    if exit_status is None:
        _, exit_status = os.waitpid(pid, 0)
    for i, fd in enumerate(fds):
        if fd in open_fds:
            for _ in range(64):
                before = counts[i][0]
                if not _read_some(fd, bufs[i], caps[i], counts[i]) or counts[i][0] == before:
                    break
        os.close(fd)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    sig = os.WTERMSIG(exit_status) if os.WIFSIGNALED(exit_status) else None
    code = os.WEXITSTATUS(exit_status) if os.WIFEXITED(exit_status) else None
    return {"wall_s": round(time.monotonic() - t0, 4), "timed_out": timed_out, "signal": sig, "exit_code": code,
            "stdout": bytes(bufs[0]).decode("utf-8", "replace"), "stderr": bytes(bufs[1]).decode("utf-8", "replace"),
            "stdout_truncated": counts[0][0] > cap, "stderr_truncated": counts[1][0] > cap,
            "report": bytes(bufs[2]).decode("utf-8", "replace"), "report_truncated": counts[2][0] > caps[2]}


def main():
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not NS:
        CFG["tmp_root"] = tempfile.mkdtemp(prefix="lorasoups-sbx-")
    info = {"uid": os.getuid(), "python": sys.version.split()[0], "pid": os.getpid()}
    sys.stdout.write(json.dumps({"ready": True, "info": info}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = run_one(json.loads(line))
        except Exception as e:  # a worker bug must not kill the pool silently
            reply = {"worker_error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if CFG.get("tmp_root"):
        shutil.rmtree(CFG["tmp_root"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
