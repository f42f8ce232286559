import json
import subprocess
import sys

from lorasoups.cli.main import main
from lorasoups.testing import make_peft_adapter


def test_inspect_prints_summary(tiny_dir, tmp_path, capsys):
    a = make_peft_adapter(tiny_dir, tmp_path / "a", r=4, lora_alpha=8, target_modules=("q_proj", "down_proj"))
    assert main(["inspect", str(a)]) == 0
    out = capsys.readouterr().out
    assert "down_proj, q_proj" in out and "modules         4" in out and "[2.0]" in out
    assert main(["inspect", str(a), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_parameters"] == 2 * (4 * 64 + 64 * 4) + 2 * (4 * 128 + 64 * 4)


def test_inspect_bad_folder_exit_code(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "missing: adapter folder does not exist" in capsys.readouterr().err


def test_ls_models_and_datasets(capsys):
    assert main(["ls", "models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out
    assert main(["ls", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "7,473" in out and "MIT" in out


def test_models_prepare_tiny_prints_path(capsys, tiny_dir):
    assert main(["models", "prepare", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_dir)


def test_help_is_fast_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lorasoups.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "inspect" in out.stdout
