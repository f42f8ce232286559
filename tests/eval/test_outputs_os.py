"""Outputs and the file system (issue #16): an unwritable output folder is a one-line error before
any work for merge/train/eval/cat/run; other OS errors are one line naming the path; outputs
follow the umask; dependency warnings are shown once.

Read-only folders are made honestly: tests run as root here, where chmod 0555 does not stop
writes, so as root the folder gets the immutable attribute (``chattr +i``: even root cannot create
entries in it), and as another user chmod 0555; either way the fixture first checks that creating a
file there really fails, else the test is skipped. A path below a regular file fails for everyone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import pytest

import lorasoups.eval.runner as eval_runner
import lorasoups.experiment as experiment
import lorasoups.merge.driver as merge_driver
import lorasoups.train.cat as cat_mod
import lorasoups.train.sft as sft_mod
from lorasoups.cli.main import dependency_warnings_once, main
from lorasoups.errors import LorasoupsError
from lorasoups.eval.generate import CannedGenerator
from lorasoups.paths import atomic_dir, atomic_write_text, check_writable
from lorasoups.testing import make_peft_adapter


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    undo = None
    if os.geteuid() == 0:
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
            undo = ["chattr", "-i", str(d)]
    else:
        d.chmod(0o555)
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        if undo:
            subprocess.run(undo, check=False)
        d.chmod(0o755)
        pytest.skip("cannot make a folder read-only here (no chattr +i as root)")
    yield d
    if undo:
        subprocess.run(undo, check=False)
    d.chmod(0o755)


@pytest.fixture(scope="module")
def two_adapters(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("osad")
    return [make_peft_adapter(tiny_dir, root / k, r=2, lora_alpha=4, target_modules=("q_proj",), seed=i)
            for i, k in enumerate("ab")]


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work function fails the test if it is reached."""
    def boom(*a, **k):
        raise AssertionError("work started although the output folder is not writable")

    monkeypatch.setattr(merge_driver, "merge_adapters", boom)
    monkeypatch.setattr(sft_mod, "train_lora", boom)
    monkeypatch.setattr(cat_mod, "train_cat", boom)
    monkeypatch.setattr(eval_runner, "evaluate", boom)
    monkeypatch.setattr(experiment.Runner, "run", boom)


def _commands(out: Path, adapters, tiny_dir, tmp_path) -> dict[str, list[str]]:
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a"}] * 4))
    cfg = Path(__file__).parents[2] / "configs" / "qabot_dnd.yaml"
    ad = [str(a) for a in adapters]
    return {
        "merge": ["merge", "--method", "linear", "--adapters", *ad, "--out", str(out)],
        "train": ["train", "--base", str(tiny_dir), "--data", str(data), "--out", str(out)],
        "eval": ["eval", "--base", str(tiny_dir), "--task", "qabot_dnd", "--out", str(out)],
        "cat": ["cat", "--base", str(tiny_dir), "--adapters", *ad, "--data", str(data), "--out", str(out)],
        "run": ["run", str(cfg), "--preset", "smoke", "--out", str(out)],
    }


@pytest.mark.parametrize("cmd", ["merge", "train", "eval", "cat", "run"])
def test_readonly_output_is_one_line_before_work(cmd, readonly_dir, two_adapters, tiny_dir, tmp_path, capsys, no_work):
    out = readonly_dir / "out"
    rc = main(_commands(out, two_adapters, tiny_dir, tmp_path)[cmd])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"lorasoups {cmd}: error: ") and str(out) in lines[0] and str(readonly_dir) in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["merge", "eval"])
def test_output_below_a_file_is_one_line(cmd, two_adapters, tiny_dir, tmp_path, capsys, no_work):
    f = tmp_path / "afile"
    f.write_text("x")
    out = f / "sub" / "out"
    assert main(_commands(out, two_adapters, tiny_dir, tmp_path)[cmd]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{f} is not a folder" in err and str(out) in err


def test_library_checks_before_loading(readonly_dir, tiny_dir, fake_data, two_adapters, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("model loaded although the output folder is not writable")

    monkeypatch.setattr(eval_runner, "build_generator", no_model)
    with pytest.raises(LorasoupsError, match="cannot write in"):
        eval_runner.evaluate(str(tiny_dir), None, ["qabot_dnd"], readonly_dir / "o", data_dir=fake_data, limit=1)
    with pytest.raises(LorasoupsError, match="cannot write in"):
        merge_driver.merge_adapters(two_adapters, "linear", readonly_dir / "m")
    check_writable(readonly_dir.parent / "fresh" / "deeper")  # a writable ancestor: fine
    assert not (readonly_dir.parent / "fresh").exists()  # the check creates nothing


def test_disk_full_during_work_is_one_line_naming_the_output(two_adapters, tmp_path, capsys, monkeypatch):
    from lorasoups.merge.stream import SafetensorsStreamWriter

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # like a failing write(): no file name

    monkeypatch.setattr(SafetensorsStreamWriter, "add", full)
    out = tmp_path / "m"
    rc = main(["merge", "--method", "linear", "--adapters", *map(str, two_adapters), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == f"lorasoups merge: error: {out}: No space left on device"
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_follow_umask_022(umask022, two_adapters, tiny_dir, fake_data, tmp_path):
    out = merge_driver.merge_adapters(two_adapters, "linear", tmp_path / "merged")
    res = tmp_path / "ev"
    eval_runner.evaluate(str(tiny_dir), None, ["qabot_dnd"], res, data_dir=fake_data, limit=2, likelihood=False,
                         generator=CannedGenerator(["x"]))
    atomic_write_text(tmp_path / "notes" / "r.json", "{}")
    for root in (out, res, tmp_path / "notes"):
        modes = _modes(root)
        assert len(modes) >= 2
        for name, m in modes.items():
            want = 0o755 if (tmp_path / name).is_dir() else 0o644
            assert m == want, f"{name}: {oct(m)} under umask 022, want {oct(want)}"


def test_umask_077_stays_private(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_dir(tmp_path / "p") as t:
            (t / "f.txt").write_text("x")
        atomic_write_text(tmp_path / "q.txt", "y")
    finally:
        os.umask(old)
    assert set(_modes(tmp_path / "p").values()) == {0o700, 0o600}
    assert stat.S_IMODE((tmp_path / "q.txt").stat().st_mode) == 0o600


def test_dependency_warnings_once(monkeypatch):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda msg, *a, **k: shown.append(str(msg)))

    def dependency_call():
        warnings.warn("`some_option` is deprecated", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)  # known harmless: hidden

    monkeypatch.setattr("sys.warnoptions", [])
    with warnings.catch_warnings():
        warnings.resetwarnings()  # as in a plain `lorasoups` process (no -W filters of the test run)
        with dependency_warnings_once():
            for _ in range(5):
                with warnings.catch_warnings():  # libraries touch the filters between calls
                    warnings.simplefilter("ignore", DeprecationWarning)
                dependency_call()
    assert shown == ["`some_option` is deprecated"]


def test_overwrite_never_deletes_a_folder_that_is_not_an_output(two_adapters, tmp_path, capsys):
    ads = [str(a) for a in two_adapters]
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "thesis.tex").write_text("important")
    args = ["merge", "--method", "linear", "--adapters", *ads, "--out", str(mine)]
    for extra in ([], ["--overwrite"]):
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(mine) in err[0]
        assert (mine / "thesis.tex").read_text() == "important"
    assert "is not an earlier output" in err[0]
    # a file in the way is never replaced either
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(f), "--overwrite"]) == 2
    assert f.read_text() == "keep"
    # an earlier output (or an empty folder) is replaced with --overwrite, refused without it
    out = tmp_path / "merged"
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(out)]) == 0
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(out)]) == 2
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(out), "--overwrite"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(tmp_path / "empty"), "--overwrite"]) == 0
    # the library path refuses the same way
    with pytest.raises(FileExistsError, match="not an earlier output"):
        with atomic_dir(mine, overwrite=True):
            pass
    assert (mine / "thesis.tex").exists()
