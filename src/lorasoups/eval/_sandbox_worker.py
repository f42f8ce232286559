"""Sandbox worker: runs inside the isolated process and executes one program at a time.

This file is NOT imported by lorasoups. :mod:`lorasoups.eval.sandbox` starts
``<python> -I -c <bootstrap> <json config>`` inside fresh network / PID / mount namespaces (when
available), with an empty environment, and sends this file's text as the first line of the
worker's stdin; the bootstrap executes it. It must therefore use the standard library only and
run on any Python >= 3.8 (it runs under the system interpreter, not the project's venv).

Protocol (one JSON object per line): the parent writes requests on the worker's stdin and reads
replies on its stdout. The first line the worker writes is a ``{"ready": ...}`` report.

Per request the worker forks a child that: starts a new session (its own process group), moves to a
fresh temporary working directory, redirects stdin/stdout/stderr to pipes, closes every other file
descriptor, sets resource limits, installs an audit hook that refuses sockets, then executes the
program and (optionally) evaluates a call expression such as ``solution()``. The worker enforces
the wall-clock deadline, caps the captured output, and afterwards kills everything the program
left behind (its process group; in a PID namespace, every process but the worker itself).
"""

import ctypes
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

CFG = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
IS_NS_INIT = os.getpid() == 1  # init of our own PID namespace: kill(-1) only reaches our programs
RESULT_FD = 3
MS_NOSUID, MS_NODEV = 2, 4


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _mount_tmpfs(libc, target, size_mb):
    """Mount a private size-capped tmpfs on ``target`` (inside our own mount namespace only)."""
    if libc is None or not os.path.isdir(target):
        return False
    opts = ("size=%dm,mode=1777" % size_mb).encode()
    rc = libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, ctypes.c_char_p(opts))
    return rc == 0


def setup():
    """Private tmpfs mounts (namespace mode, still privileged), then drop to the unprivileged user."""
    info = {"pid": os.getpid(), "ns_init": IS_NS_INIT, "tmpfs": [], "python": sys.version.split()[0]}
    libc = _libc()
    if CFG.get("tmpfs_mb") and IS_NS_INIT:
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            if _mount_tmpfs(libc, d, int(CFG["tmpfs_mb"])):
                info["tmpfs"].append(d)
    uid, gid = CFG.get("uid"), CFG.get("gid")
    if uid is not None:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
        if os.getuid() != int(uid) or os.geteuid() != int(uid):
            raise SystemExit("sandbox worker: could not drop to uid %s" % uid)
    info["uid"], info["gid"] = os.getuid(), os.getgid()
    return info


def _set_limits(lim):
    """Resource limits for the program child. Values: seconds, bytes, counts."""
    def _set(which, soft, hard=None):
        hard = soft if hard is None else hard
        try:
            cur_soft, cur_hard = resource.getrlimit(which)
            if cur_hard != resource.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass

    cpu = int(lim["cpu_s"])
    _set(resource.RLIMIT_CPU, cpu, cpu + 1)
    _set(resource.RLIMIT_AS, int(lim["as_bytes"]))
    _set(resource.RLIMIT_FSIZE, int(lim["fsize_bytes"]))
    _set(resource.RLIMIT_NOFILE, int(lim["nofile"]))
    _set(resource.RLIMIT_NPROC, int(lim["nproc"]))
    _set(resource.RLIMIT_CORE, 0)


def _refuse_sockets(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the sandbox (%s)" % event)


def _describe_value(v):
    """JSON-safe description of a returned value: type name, repr, and a float when numeric."""
    out = {"type": type(v).__name__, "repr": None, "number": None}
    try:
        r = repr(v)
    except Exception as e:  # e.g. int too large to convert to str
        r = "<unrepresentable %s: %s>" % (type(v).__name__, e)
    out["repr"] = r[:2000]
    num = None
    if isinstance(v, bool):
        num = float(v)
    elif isinstance(v, (int, float)):
        try:
            num = float(v)
        except OverflowError:
            num = None
    else:
        try:
            import numbers
            if isinstance(v, numbers.Number) and not isinstance(v, complex):
                num = float(v)
        except Exception:
            num = None
    if num is not None and (num != num or num in (float("inf"), float("-inf"))):
        out["repr"] = out["repr"] or str(num)
        num = None
    out["number"] = num
    if isinstance(v, str):
        out["str"] = v[:2000]
    return out


def child_main(req, out_w, err_w, res_w, workdir):
    """Runs in the forked child; never returns."""
    code = 70
    me = os.getpid()
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, RESULT_FD)
        os.closerange(RESULT_FD + 1, 65536)
        os.chdir(workdir)
        os.umask(0o077)
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-limit write fails with EFBIG
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        libc = _libc()
        if libc is not None:
            try:
                libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
                if not IS_NS_INIT:
                    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
            except Exception:
                pass
        _set_limits(req["limits"])
        os.environ.clear()
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False, errors="replace")
        sys.stderr = open(2, "w", closefd=False, errors="replace")
        sys.argv = ["program"]
        sys.path[:] = [p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p]
        if req.get("block_sockets", True):
            sys.addaudithook(_refuse_sockets)
        result = {"status": "ok"}
        g = {"__name__": "__main__", "__builtins__": __builtins__}
        try:
            exec(compile(req["code"], "<program>", "exec"), g)
            if req.get("call"):
                result["value"] = _describe_value(eval(compile(req["call"], "<call>", "eval"), g))
        except MemoryError:
            result = {"status": "oom", "error": "MemoryError: out of memory (address-space limit)"}
        except SystemExit as e:
            if e.code not in (None, 0):
                result = {"status": "error", "error": "SystemExit: %r" % (e.code,), "error_type": "SystemExit"}
            elif req.get("call"):
                result = {"status": "error", "error": "SystemExit before the call", "error_type": "SystemExit"}
        except BaseException as e:  # noqa: B902 - every exception of the program is data
            try:
                msg = "%s: %s" % (type(e).__name__, e)
            except Exception:
                msg = type(e).__name__
            result = {"status": "error", "error": msg[:2000], "error_type": type(e).__name__}
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        if os.getpid() != me:  # a process the program forked: only the program itself reports
            os._exit(0)
        try:
            data = json.dumps(result).encode()
        except Exception as e:
            data = json.dumps({"status": "error", "error": "unserialisable result: %s" % e}).encode()
        try:
            os.write(RESULT_FD, data)
            code = 0
        except OSError:
            code = 71
    except MemoryError:
        try:
            if os.getpid() == me:
                os.write(RESULT_FD, b'{"status": "oom", "error": "MemoryError"}')
        except BaseException:
            pass
        code = 72
    except BaseException:
        code = 70
    os._exit(code)


def _read_some(fd, buf, cap, counter):
    """Read what is available on ``fd``; keep at most ``cap`` bytes in ``buf``. Returns False on EOF."""
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


def _kill_leftovers(pgid):
    """Kill the program's process group and, as namespace init, every other process in it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
    if IS_NS_INIT:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass


def _reap(pid):
    """Wait for ``pid``; as namespace init, also reap every orphan adopted by us."""
    status = None
    if IS_NS_INIT:
        while True:
            try:
                p, st = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if p == pid:
                status = st
    else:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return status


def run_one(req, tmp_root):
    t0 = time.monotonic()
    timeout = float(req.get("timeout", 5.0))
    cap = int(req.get("output_cap", 65536))
    workdir = tempfile.mkdtemp(prefix="run-", dir=tmp_root)
    pipes = [os.pipe() for _ in range(3)]
    pid = os.fork()
    if pid == 0:
        for r, _ in pipes:
            os.close(r)
        child_main(req, pipes[0][1], pipes[1][1], pipes[2][1], workdir)
    for _, w in pipes:
        os.close(w)
    out_r, err_r, res_r = (r for r, _ in pipes)
    for fd in (out_r, err_r, res_r):
        os.set_blocking(fd, False)
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    caps = {out_r: cap, err_r: cap, res_r: 1 << 20}
    counts = {out_r: [0], err_r: [0], res_r: [0]}
    open_fds = {out_r, err_r, res_r}
    deadline = t0 + timeout
    timed_out = False
    exit_status = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        if open_fds:
            try:
                ready, _, _ = select.select(list(open_fds), [], [], min(0.02, deadline - now))
            except InterruptedError:
                ready = []
            for fd in ready:
                if not _read_some(fd, bufs[fd], caps[fd], counts[fd]):
                    open_fds.discard(fd)
        else:
            time.sleep(min(0.005, max(0.0, deadline - now)))
        try:
            p, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            p, st = pid, 0
        if p == pid:
            exit_status = st
            break
    _kill_leftovers(pid)
    st = _reap(pid)
    if exit_status is None:
        exit_status = st
    for fd in list(open_fds):  # whatever is still buffered in the pipes
        for _ in range(64):
            before = counts[fd][0]
            if not _read_some(fd, bufs[fd], caps[fd], counts[fd]) or counts[fd][0] == before:
                break
    for fd in (out_r, err_r, res_r):
        os.close(fd)
    shutil.rmtree(workdir, ignore_errors=True)

    reply = {"wall_s": round(time.monotonic() - t0, 4)}
    reply["stdout"] = bytes(bufs[out_r]).decode("utf-8", "replace")
    reply["stderr"] = bytes(bufs[err_r]).decode("utf-8", "replace")
    reply["stdout_bytes"], reply["stderr_bytes"] = counts[out_r][0], counts[err_r][0]
    reply["stdout_truncated"] = counts[out_r][0] > cap
    reply["stderr_truncated"] = counts[err_r][0] > cap
    result = None
    if bufs[res_r]:
        try:
            result = json.loads(bytes(bufs[res_r]).decode("utf-8", "replace"))
        except ValueError:
            result = None
    sig = None
    code = None
    if exit_status is not None:
        if os.WIFSIGNALED(exit_status):
            sig = os.WTERMSIG(exit_status)
        elif os.WIFEXITED(exit_status):
            code = os.WEXITSTATUS(exit_status)
    reply["signal"], reply["exit_code"] = sig, code
    if timed_out:
        reply["status"] = "timeout"
        reply["error"] = "wall-clock timeout after %.1f s" % timeout
    elif sig == signal.SIGXCPU:
        reply["status"] = "timeout"
        reply["error"] = "CPU-time limit exceeded"
    elif result is not None and isinstance(result, dict) and result.get("status"):
        reply.update(result)
    elif sig is not None:
        reply["status"] = "oom" if sig == signal.SIGKILL else "error"
        reply["error"] = "killed by signal %d" % sig
    else:
        reply["status"] = "error"
        reply["error"] = "program exited (code %s) without a result" % code
    return reply


def main():
    try:
        info = setup()
    except BaseException as e:
        sys.stdout.write(json.dumps({"ready": False, "error": "%s: %s" % (type(e).__name__, e)}) + "\n")
        sys.stdout.flush()
        return 1
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tmp_root = tempfile.mkdtemp(prefix="lorasoups-sbx-")
    info["tmp_root"] = tmp_root
    sys.stdout.write(json.dumps({"ready": True, "info": info}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            reply = run_one(req, tmp_root)
        except Exception as e:  # a worker bug must not kill the pool silently
            reply = {"status": "error", "error": "sandbox worker: %s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    shutil.rmtree(tmp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
