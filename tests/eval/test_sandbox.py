"""The sandbox's acceptance cases: every misbehaving program becomes data, the evaluator survives."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lorasoups.eval.sandbox import NOBODY, ExecResult, Limits, Program, Sandbox

TIMEOUT = 1.5


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2, limits=Limits(timeout_s=TIMEOUT, memory_mb=512, fsize_mb=8, output_cap=16384)) as s:
        yield s


def _uid_procs(uid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            for line in (p / "status").read_text().splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    out.append(int(p.name))
        except (OSError, ValueError):
            pass
    return out


def test_isolation_in_force(sb):
    info = sb.info
    assert info["interpreter"]
    if os.geteuid() == 0 and info["isolation"] == "namespaces+uid":
        assert info["uid"] == NOBODY and info["pid_namespace"]
    r = sb.run("import os, sys\nprint(os.getuid(), sys.flags.isolated, sorted(os.environ))")
    assert r.status == "ok"
    uid, isolated, env = r.stdout.split(" ", 2)
    assert isolated == "1" and env.strip() == "[]"
    if info["isolation"] == "namespaces+uid":
        assert int(uid) == NOBODY


def test_return_value_and_errors_are_data(sb):
    r = sb.run("def solution():\n    return 6 * 7\n", call="solution()")
    assert r.status == "ok" and r.number == 42.0 and r.value["type"] == "int"
    r = sb.run("def solution():\n    return '1,234'\n", call="solution()")
    assert r.value["str"] == "1,234" and r.number is None
    r = sb.run("x = 1 / 0")
    assert r.status == "error" and r.error_type == "ZeroDivisionError"
    r = sb.run("def f(:\n")
    assert r.status == "error" and r.error_type == "SyntaxError"
    r = sb.run("import sys\nsys.exit(3)")
    assert r.status == "error" and "SystemExit" in r.error
    assert isinstance(r, ExecResult)


def test_infinite_loop_times_out(sb):
    t0 = time.monotonic()
    r = sb.run("while True:\n    pass\n")
    took = time.monotonic() - t0
    assert r.status == "timeout"
    assert took <= TIMEOUT + 1.0, took


def test_fork_bomb_is_contained(sb):
    before = len(_uid_procs(NOBODY)) if sb.info["isolation"] == "namespaces+uid" else None
    r = sb.run("import os\nwhile True:\n    os.fork()\n")
    assert r.status in ("error", "timeout")
    # nothing left behind, the host can still start processes, the pool still works
    time.sleep(0.2)
    if before is not None:
        assert len(_uid_procs(NOBODY)) <= before
    assert subprocess.run(["true"]).returncode == 0
    assert sb.run("print('still fine')").stdout.strip() == "still fine"


def test_background_process_killed_after_program(sb):
    if not sb.info["pid_namespace"]:
        pytest.skip("needs the PID-namespace isolation")
    r = sb.run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')")
    assert r.status == "ok"
    r = sb.run("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert int(r.stdout) <= 2  # the worker (pid 1) and this program


def test_huge_allocation_is_refused(sb):
    r = sb.run("x = bytearray(10 * 1024 ** 3)\n")
    assert r.status in ("oom", "error")
    assert r.status == "oom"


def test_big_file_refused_by_size_limit(sb):
    r = sb.run("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (100 * 1024 * 1024))\n")
    assert r.status == "error"
    assert "File too large" in r.error


def test_big_output_is_capped(sb):
    r = sb.run("import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))\n")
    assert len(r.stdout) <= 16384 and r.stdout_truncated
    assert r.status in ("ok", "timeout")


def test_no_network(sb):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
        r = sb.run(code)
        assert r.status == "error" and "connected" not in r.stdout
        if not sb.info["isolation"].startswith("process"):
            # the network namespace alone (in-process socket refusal off) also blocks it
            with Sandbox(workers=1, limits=Limits(timeout_s=3), block_sockets=False) as raw:
                r2 = raw.run(code)
            assert r2.status == "error" and "connected" not in r2.stdout
        with pytest.raises(BlockingIOError):
            srv.accept()
    finally:
        srv.close()


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("LORASOUPS_SECRET_TOKEN", "hunter2")
    with Sandbox(workers=1, limits=Limits(timeout_s=3)) as s:  # started after the variable was set
        r = s.run("import os\nprint(os.environ.get('LORASOUPS_SECRET_TOKEN'))\n"
                  "try:\n    print(open('/proc/self/environ').read().count('hunter2'))\n"
                  "except OSError as e:\n    print(type(e).__name__)\n")
    assert r.status == "ok"
    assert r.stdout.split()[0] == "None" and "hunter2" not in r.stdout
    assert r.stdout.split()[1] in ("0", "PermissionError")


def test_killing_the_parent_does_not_hurt_the_evaluator(sb):
    me = os.getpid()
    code = (f"import os, signal\n"
            f"for pid in ({me}, os.getppid(), 1):\n"
            f"    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(type(e).__name__)\n"
            f"print('done')")
    r = sb.run(code)
    assert r.status in ("ok", "error")
    assert os.getpid() == me  # still here
    assert sb.run("print(1)").stdout.strip() == "1"


def test_200_trivial_programs_through_the_pool_under_10s(sb):
    progs = [Program(f"def solution():\n    return {i}\n", "solution()") for i in range(200)]
    t0 = time.monotonic()
    res = sb.run_many(progs)
    took = time.monotonic() - t0
    assert [r.number for r in res] == [float(i) for i in range(200)]
    assert took < 10.0, took


def test_process_isolation_fallback_runs():
    with Sandbox(workers=1, isolation="process", limits=Limits(timeout_s=2)) as s:
        assert s.info["isolation"] == ("process+uid" if os.geteuid() == 0 else "process")
        if os.geteuid() == 0:
            assert s.run("import os\nprint(os.getuid())").stdout.strip() == str(NOBODY)
        r = s.run("import socket\nsocket.socket()")
        assert r.status == "error" and "network access is disabled" in r.error
        assert s.run("def solution():\n    return 2.5\n", call="solution()").number == 2.5
