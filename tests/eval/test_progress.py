"""Progress bars with ETA (issue #16): on stderr for evaluation (generation and likelihood batches),
forced with LORASOUPS_PROGRESS=1 where stderr is not a terminal, off with --quiet or
LORASOUPS_PROGRESS=0, never in results files."""

import json
import re

from lorasoups.cli.main import main
from lorasoups.progress import bar, progress_enabled

BAR = re.compile(r"qabot_dnd (generate|likelihood):\s+\d+%\|[^|]*\| (\d+)/(\d+) \[")


def _eval(tiny_dir, fake_data, out, *extra):
    return main(["eval", "--base", str(tiny_dir), "--task", "qabot_dnd", "--limit", "3", "--max-new-tokens", "2",
                 "--batch-size", "1", "--out", str(out), "--data-dir", str(fake_data), "--fp32", *extra])


def test_eval_bars_on_stderr_only(fake_data, tmp_path, tiny_dir, capsys, monkeypatch):
    import lorasoups.eval.likelihood as likelihood
    import lorasoups.eval.runner as runner

    def every_update(*a, **k):  # redraw on every update, to see the per-batch counts
        b = bar(*a, **k)
        b.mininterval, b.miniters = 0, 1
        return b

    monkeypatch.setattr(runner, "_bar", every_update)
    monkeypatch.setattr(likelihood, "_bar", every_update)
    monkeypatch.setenv("LORASOUPS_PROGRESS", "1")
    assert _eval(tiny_dir, fake_data, tmp_path / "o") == 0
    cap = capsys.readouterr()
    found = {(m.group(1), m.group(2), m.group(3)) for m in BAR.finditer(cap.err)}
    # per-batch updates (batch size 1): partial counts appear before the final ones
    assert ("generate", "3", "3") in found and ("generate", "1", "3") in found, cap.err[-2000:]
    assert ("likelihood", "6", "6") in found and ("likelihood", "1", "6") in found  # 3 gold + 3 control pairs
    assert "<?" in cap.err or "<00:" in cap.err  # ETA field
    assert "%|" not in cap.out
    for f in (tmp_path / "o").rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert "%|" not in text and "it/s" not in text and "item/s" not in text, f


def test_eval_quiet_or_off_has_no_bars(fake_data, tmp_path, tiny_dir, capsys, monkeypatch):
    monkeypatch.setenv("LORASOUPS_PROGRESS", "1")
    assert _eval(tiny_dir, fake_data, tmp_path / "q", "--quiet") == 0
    assert "%|" not in capsys.readouterr().err
    monkeypatch.setenv("LORASOUPS_PROGRESS", "0")
    assert _eval(tiny_dir, fake_data, tmp_path / "z") == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "[eval] qabot_dnd: generating" in err  # the progress lines stay


def test_progress_switch(monkeypatch):
    monkeypatch.delenv("LORASOUPS_PROGRESS", raising=False)
    # pytest captures stderr: not a terminal, so bars are off unless forced
    assert progress_enabled(None) is False
    monkeypatch.setenv("LORASOUPS_PROGRESS", "always")
    assert progress_enabled(None) is True and progress_enabled(False) is False
    assert bar(3, "x", progress=False).disable and not bar(3, "x").disable


def test_merge_bar_per_module(tiny_dir, tmp_path, capsys, monkeypatch):
    from lorasoups.testing import make_peft_adapter

    ads = [str(make_peft_adapter(tiny_dir, tmp_path / k, r=2, lora_alpha=4, target_modules=("q_proj", "v_proj"),
                                 seed=i)) for i, k in enumerate("ab")]
    monkeypatch.setenv("LORASOUPS_PROGRESS", "1")
    assert main(["merge", "--method", "ties", "--adapters", *ads, "--out", str(tmp_path / "t")]) == 0
    cap = capsys.readouterr()
    n = len(json.loads((tmp_path / "t" / "merge_info.json").read_text())["svd"]["rel_fro_error"])
    assert n > 1 and re.search(rf"merge ties \+ SVD: 100%\|[^|]*\| {n}/{n} \[", cap.err), cap.err[-1500:]
    assert "%|" not in cap.out and "relative Frobenius error" in cap.out
    assert main(["merge", "--method", "linear", "--adapters", *ads, "--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
