"""The sandbox's acceptance cases (issue #12 and what held before): every hostile program becomes
data with the right verdict, and the host is checked afterwards (no process, file, IPC object left)."""

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lorasoups.eval.registry import Item, get_task
from lorasoups.eval._sandbox_setup import Cgroups
from lorasoups.eval.samples import read_samples, write_samples
from lorasoups.eval.sandbox import NOBODY, ExecResult, Limits, Program, Sandbox, SandboxError

TIMEOUT = 1.5
X86 = platform.machine() == "x86_64"
CGROUPS = bool(Cgroups().kind)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the acceptance suite runs as root (bwrap mode)")


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=TIMEOUT, memory_mb=256, fsize_mb=8, output_cap=16384)) as s:
        yield s


@pytest.fixture(scope="module")
def sb1():
    """One worker: consecutive programs run on the same worker."""
    with Sandbox(workers=1, limits=Limits(timeout_s=TIMEOUT, memory_mb=256)) as s:
        yield s


def _uid_procs(uid: int = NOBODY) -> list[int]:
    """Processes of ``uid``: those in this test process's sandbox cgroups when there are any (other
    users of this machine may run their own uid-65534 processes), else all of them."""
    mine = f"lorasoups-sbx-{os.getpid()}-"
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cg = (p / "cgroup").read_text()
                if CGROUPS and mine not in cg:
                    continue
                for line in (p / "status").read_text().splitlines():
                    if line.startswith("Uid:") and int(line.split()[1]) == uid:
                        out.append(int(p.name))
            except (OSError, ValueError):
                pass
    return out


def _host_ipc() -> dict[str, int]:
    return {k: len(Path(f"/proc/sysvipc/{k}").read_text().splitlines()) for k in ("shm", "msg", "sem")}


@pytest.fixture()
def host_clean():
    """After the test: no sandbox process alive, no new SysV IPC object on the host."""
    ipc = _host_ipc()
    yield
    for _ in range(50):
        if not _uid_procs():
            break
        time.sleep(0.05)
    assert [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in _uid_procs()] == []
    assert _host_ipc() == ipc


def _mbpp(sb, completion_code: str, tests: list[str]) -> dict:
    task = get_task("mbpp")
    item = Item("mbpp-x", "", None, gold=tests, gold_text=None, meta={"setup": ""})
    prog, code, _ = task.program(item, f"```python\n{completion_code}\n```")
    r = sb.run(prog.code, prog.call, prog.timeout_s, prog.checks)
    return task.score(item, "", r, code) | {"result": r}


def _math(sb, code: str, gold: float) -> dict:
    task = get_task("gsm_hard")
    item = Item("gsm_hard-x", "", None, gold=gold, gold_text=None)
    prog, extracted, _ = task.program(item, f"```\n{code}\n```")
    r = sb.run(prog.code, prog.call, prog.timeout_s, prog.checks)
    return task.score(item, "", r, extracted) | {"result": r}


# --- failing inputs 1-7 of issue #12 ------------------------------------------------------------
@pytest.mark.parametrize("exit_code", [
    "import sys\nsys.exit(0)\ndef add(a, b):\n    return 0",
    "exit()\ndef add(a, b):\n    return 0",
    "quit()\ndef add(a, b):\n    return 0",
    "import os\nos._exit(0)\ndef add(a, b):\n    return 0",
    "def add(a, b):\n    raise SystemExit",
    "import os\ndef add(a, b):\n    os._exit(0)",
])
def test_1_early_exit_fails(sb, host_clean, exit_code):
    rec = _mbpp(sb, exit_code, ["assert add(1, 2) == 3"])
    assert rec["scores"]["pass_at_1"] == 0.0 and rec["result"].status == "error"
    assert rec["result"].checks_passed == 0
    assert _mbpp(sb, "def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"])["scores"]["pass_at_1"] == 1.0


def test_1_early_exit_in_solution_fails(sb):
    rec = _math(sb, "import sys\ndef solution():\n    sys.exit(0)", 3.0)
    assert rec["scores"]["exec_acc"] == 0.0 and rec["result"].status == "error"


def test_2_eq_override_fails(sb, host_clean):
    code = ("class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
            "class I(int):\n    def __eq__(self, o):\n        return True\n")
    for body in ("return A()", "return I(7)", "return [A()]"):
        rec = _mbpp(sb, code + f"def f(a, b):\n    {body}", ["assert f(1, 2) == 3", "assert f(1, 2) == [3]"])
        assert rec["scores"]["pass_at_1"] == 0.0, body
        assert rec["result"].error_type == "AssertionError"
    # and a solution() returning such an object is no number
    rec = _math(sb, code + "def solution():\n    return I(3)", 3.0)
    assert rec["scores"]["exec_acc"] == 0.0


def test_3_host_folders_not_visible(sb, tmp_path):
    marker = Path("/tmp") / f"lsx-marker-{os.getpid()}"
    marker.write_text("x")
    from lorasoups.paths import find_data_dir

    data = find_data_dir()  # the real data folder of this checkout: it exists on the host
    gold = data / "gsm_hard" / "gsmhardv2.jsonl"
    assert gold.exists()
    try:
        paths = [str(gold), str(data), str(Path.cwd()),
                 str(Path(__file__).resolve()), "/home", "/root", "/srv", "/run", "/etc/passwd", str(marker),
                 str(tmp_path), "/var", "/opt", "/sys/fs/cgroup"]
        r = sb.run(f"import os\nprint([p for p in {paths!r} if os.path.exists(p)])\nprint(sorted(os.listdir('/')))")
        assert r.status == "ok", r.error
        lines = r.stdout.splitlines()
        assert lines[0] == "[]"
        assert set(eval(lines[1])) <= {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
        rec = _math(sb, "def solution():\n    import json\n"
                        f"    for l in open({str(gold)!r}):\n"
                        "        return json.loads(l)['target']", 1.0)
        assert rec["result"].status == "error" and "FileNotFoundError" in rec["result"].error
    finally:
        marker.unlink()


def test_4_writes_do_not_outlive_the_program(sb1, host_clean):
    before = set(os.listdir("/tmp"))
    r = sb1.run("import os\nfor p in ('/run/lock/x', '/tmp/x', '/dev/shm/x', 'rel.txt'):\n"
                "    try:\n        open(p, 'w').write('y'); print('wrote', p)\n"
                "    except OSError as e:\n        print('no', p, type(e).__name__)\n")
    assert r.status == "ok"
    assert "no /run/lock/x" in r.stdout and "wrote /tmp/x" in r.stdout
    assert not Path("/run/lock/x").exists()
    assert set(os.listdir("/tmp")) - before == set()
    r = sb1.run("import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')))")
    assert r.stdout.strip() == "[] []"


@pytest.mark.parametrize("attack", [
    "import os\nos.chmod(os.path.dirname(os.getcwd()), 0o500)\nos.chmod(os.getcwd(), 0o500)",
    "import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (3, 3))",
    "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (3, 3))",
    "import os, signal\nfor p in range(1, 50):\n    try:\n        os.kill(p, signal.SIGSTOP)\n    except OSError:\n        pass",
])
def test_5_program_cannot_touch_worker_or_next_program(sb1, host_clean, attack):
    sb1.run(attack)
    follow = "def f(a, b):\n    return a + b\nopen('t.txt', 'w').write('ok')"
    for _ in range(3):
        assert _mbpp(sb1, follow, ["assert f(1, 2) == 3"])["scores"]["pass_at_1"] == 1.0


def test_6_malformed_program_side_report_is_error(sb, host_clean):
    fake = ("import os\nos.write(3, b'{\"status\": \"ok\", \"value\": {\"number\": \"7\"}}\\n')\nos._exit(0)\n"
            "def solution():\n    return 7")
    r = sb.run(fake, call="solution()")
    assert r.status == "error" and r.number is None
    rec = _math(sb, fake, 7.0)
    assert rec["scores"]["exec_acc"] == 0.0 and rec["result"].status == "error"
    # a second report line, binary garbage, a huge line: all errors, never an exception
    for code in ("import os\nos.write(3, b'{}\\n')", "import os\nos.write(3, b'\\xff\\xfe')\nos._exit(0)",
                 "import os\nos.write(3, b'[' * 100000)\nos._exit(0)"):
        assert sb.run(code).status == "error"


def test_7_lone_surrogate_reaches_samples(sb, tmp_path):
    r = sb.run("raise ValueError('\\ud800')")
    assert r.status == "error" and r.error_type == "ValueError"
    r2 = sb.run("import sys\nprint('\\udcff')\nsys.stderr.write('\\ud800')\ndef solution():\n    return '\\ud800'",
                call="solution()")
    recs = [{"id": "a", "completion": "x", "error": r.error, "stdout": r2.stdout, "stderr": r2.stderr,
             "value": r2.value, "bad": "\ud800"}]
    write_samples(tmp_path / "s.jsonl", recs)
    back = read_samples(tmp_path / "s.jsonl")
    assert back[0]["id"] == "a" and "ValueError" in back[0]["error"]
    json.dumps(r2.to_dict(), ensure_ascii=False).encode("utf-8")


# --- the other kinds of issue #12 ---------------------------------------------------------------
def test_memory_of_several_processes_is_bounded(host_clean):
    lim = Limits(timeout_s=8, memory_mb=256, nproc=16)
    with Sandbox(workers=1, limits=lim) as s:
        if not s.info["memory_bound"].startswith("cgroup"):
            pytest.skip("no writable cgroup here")
        code = ("import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
                "        b = bytearray(120 * 1024 * 1024)\n        b[::4096] = b'x' * len(b[::4096])\n"
                "        time.sleep(1.0)\n        os._exit(0)\n    kids.append(pid)\n"
                "print(sum(os.waitpid(k, 0)[1] == 0 for k in kids))\n")
        r = s.run(code)
        assert r.status == "oom" or (r.status == "ok" and int(r.stdout) < 4), (r.status, r.stdout)
        assert s.run("print(1)").stdout.strip() == "1"


@pytest.mark.skipif(not X86, reason="syscall numbers for x86_64")
def test_ipc_and_keyrings_do_not_survive(sb1, host_clean):
    make = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.shmget(0x4d2, 4096, 0o1666) >= 0, libc.msgget(0x4d2, 0o1666) >= 0, libc.semget(0x4d2, 1, 0o1666) >= 0)\n"
            "ks = [libc.syscall(248, b'user', b'lsx', b'secret', 6, k) for k in (-4, -3, -5)]\n"  # @u @s @us
            "print([k > 0 for k in ks])\n")
    r = sb1.run(make)
    assert r.stdout.splitlines()[0] == "True True True", r.stdout + r.stderr
    look = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.shmget(0x4d2, 0, 0), libc.msgget(0x4d2, 0), libc.semget(0x4d2, 0, 0))\n"
            "print([libc.syscall(250, 10, k, b'user', b'lsx', 0) for k in (-4, -3, -5)])\n")  # KEYCTL_SEARCH
    r = sb1.run(look)
    assert r.stdout.splitlines() == ["-1 -1 -1", "[-1, -1, -1]"], r.stdout + r.stderr


def test_raw_sockets_cannot_reach_host_unix_sockets(sb, host_clean):
    path = f"/tmp/lsx-{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0lsx-{os.getpid()}")
    for s_ in (srv, abstract):
        s_.listen(1)
        s_.setblocking(False)
    abstract_name = ("\0lsx-" + str(os.getpid())).encode()
    try:
        code = ("import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "def conn(name):\n    fd = libc.socket(1, 1, 0)\n"
                "    addr = struct.pack('H', 1) + name + b'\\0' * (108 - len(name))\n"
                "    return libc.connect(fd, addr, len(addr))\n"
                f"print(conn({path.encode()!r}), conn({abstract_name!r}))\n"
                "print(libc.socket(2, 3, 255), libc.socket(17, 3, 768))\n")  # AF_INET raw, AF_PACKET
        r = sb.run(code)
        assert r.status == "ok" and r.stdout.split() == ["-1", "-1", "-1", "-1"], r.stdout + r.stderr
        for s_ in (srv, abstract):
            with pytest.raises(BlockingIOError):
                s_.accept()
    finally:
        srv.close()
        abstract.close()
        os.unlink(path)


def test_inode_flood_is_capped(sb1, host_clean):
    t0 = time.monotonic()
    r = sb1.run("import os\nfor i in range(10 ** 6):\n    open(f'/tmp/f{i}', 'w').close()\n")
    assert r.status == "error" and "No space left" in r.error and time.monotonic() - t0 < TIMEOUT + 0.5
    r = sb1.run("import os\nprint(len(os.listdir('/tmp')))\nopen('/tmp/a', 'w').close()")
    assert r.status == "ok" and r.stdout.strip() == "0"


def test_program_uid_is_not_host_root(sb):
    r = sb.run("import os\nprint(os.getuid(), os.geteuid(), open('/proc/self/uid_map').read().split())\n"
               "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    uid, euid, *rest = r.stdout.split(None, 2)
    assert (uid, euid) == (str(NOBODY), str(NOBODY))
    inside, outside, count = eval(rest[0].splitlines()[0])
    assert outside == str(NOBODY) and count == "1"  # uid 65534 inside is 65534 on the host, nothing else
    assert int(r.stdout.splitlines()[-1], 16) == 0  # no capabilities


def test_daemon_does_not_outlive_the_program(sb, host_clean):
    import threading

    seen: list[int] = []
    th = threading.Thread(target=lambda: sb.run("import time\ntime.sleep(1.0)"))
    th.start()
    # the host check sees a running program (so it would see a leftover one); polled for as long
    # as the program runs, so a slow start on a loaded machine does not fail the check
    while th.is_alive():
        seen = _uid_procs()
        if seen:
            break
        time.sleep(0.025)
    th.join()
    assert seen
    r = sb.run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               "        time.sleep(60)\n    os._exit(0)\nprint('parent done')")
    assert r.status == "ok", r.error
    r = sb.run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert r.stdout.strip() == "[1]"  # only the program itself in its PID namespace


def test_sandbox_dies_with_the_evaluator():
    import sys

    script = ("import threading, time\nfrom lorasoups.eval.sandbox import Sandbox, Limits\n"
              "sb = Sandbox(workers=1, limits=Limits(timeout_s=60))\n"
              "threading.Thread(target=lambda: sb.run('import os, time\\nos.fork()\\ntime.sleep(60)'), daemon=True).start()\n"
              "time.sleep(30)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", script], env=env)
    tag = f"lorasoups-sbx-{p.pid}-"

    def procs() -> list[int]:
        out = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and tag in (d / "cgroup").read_text():
                    out.append(int(d.name))
            except OSError:
                pass
        return out

    for _ in range(500):  # until the program and its child run (up to 25 s: slow starts under load)
        if len(procs()) >= 4:
            break
        time.sleep(0.05)
    assert len(procs()) >= 4 or not CGROUPS
    p.kill()
    p.wait()
    for _ in range(100):
        if not procs():
            break
        time.sleep(0.05)
    assert procs() == []
    Sandbox(workers=1).close()  # a new sandbox removes the dead evaluator's empty cgroups
    assert not [d for r in Cgroups().roots for d in r.glob(tag + "*")]


def test_same_verdict_across_runs():
    code = "print(hash('lorasoups'), list({'a', 'b', 'c', 'd', 'e'}))"
    outs = []
    for _ in range(2):
        with Sandbox(workers=2, limits=Limits(timeout_s=3)) as s:
            outs += [r.stdout for r in s.run_many([code] * 3)]
    assert len(set(outs)) == 1


def test_refuses_without_strong_isolation_unless_weak(monkeypatch):
    import lorasoups.eval.sandbox as sbx

    monkeypatch.setattr(sbx, "_PROBED", {"bwrap": "no user namespaces (test)", "bwrap-userns": "no (test)"})
    with pytest.raises(SandboxError, match="weak-isolation"):
        Sandbox(workers=1)
    with Sandbox(workers=1, isolation="weak", limits=Limits(timeout_s=2)) as s:
        assert s.info["isolation"] == "weak"
        assert s.run("def solution():\n    return 2.5\n", call="solution()").number == 2.5
        assert s.run("import sys\nsys.exit(0)").status == "error"


# --- what held before (kept) --------------------------------------------------------------------
def test_values_and_errors_are_data(sb):
    r = sb.run("def solution():\n    return 6 * 7\n", call="solution()")
    assert r.status == "ok" and r.number == 42.0 and r.value["type"] == "int"
    r = sb.run("def solution():\n    return '1,234'\n", call="solution()")
    assert r.value["str"] == "1,234" and r.number is None
    assert sb.run("from fractions import Fraction\nx = Fraction(1, 4)", call="x").number == 0.25
    r = sb.run("x = 1 / 0")
    assert r.status == "error" and r.error_type == "ZeroDivisionError"
    assert sb.run("def f(:\n").error_type == "SyntaxError"
    r = sb.run("import os, sys\nprint(sorted(os.environ), sys.flags.no_user_site)")
    assert r.stdout.strip() == "[] 1"
    assert isinstance(r, ExecResult)


def test_limits_hold(sb, host_clean):
    t0 = time.monotonic()
    assert sb.run("while True:\n    pass\n").status == "timeout"
    assert time.monotonic() - t0 <= TIMEOUT + 1.0
    assert sb.run("import os\nwhile True:\n    os.fork()\n").status in ("error", "timeout", "oom")
    assert sb.run("x = bytearray(10 * 1024 ** 3)\n").status == "oom"
    r = sb.run("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (100 * 1024 * 1024))\n")
    assert r.status == "error"
    r = sb.run("import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))\n")
    assert len(r.stdout) <= 16384 and r.stdout_truncated
    assert subprocess.run(["true"]).returncode == 0
    assert sb.run("print('still fine')").stdout.strip() == "still fine"


def test_no_network_and_no_secrets(monkeypatch):
    monkeypatch.setenv("LORASOUPS_SECRET_TOKEN", "hunter2")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    try:
        with Sandbox(workers=1, limits=Limits(timeout_s=3)) as s:
            r = s.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=1)")
            assert r.status == "error"
            r = s.run("import os\nprint(os.environ.get('LORASOUPS_SECRET_TOKEN'))")
            assert r.stdout.strip() == "None"
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


def test_killing_the_parent_does_not_hurt_the_evaluator(sb):
    me = os.getpid()
    r = sb.run(f"import os, signal\nfor pid in ({me}, os.getppid(), 1):\n    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
    assert os.getpid() == me and r.status in ("ok", "error", "oom")
    assert sb.run("print(1)").stdout.strip() == "1"


def test_200_programs_keep_their_order(sb):
    progs = [Program(f"def solution():\n    return {i}\n", "solution()") for i in range(200)]
    assert [r.number for r in sb.run_many(progs)] == [float(i) for i in range(200)]
