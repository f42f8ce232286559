"""Every command's --help renders (flags generated from the option specs included)."""

import pytest

from lorasoups.cli.main import main

COMMANDS = ["train", "merge", "cat", "lorahub", "moe", "eval", "run", "validate", "report", "inspect", "ls", "models"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_renders(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_negated_switch_has_no_double_negation(capsys):
    with pytest.raises(SystemExit):
        main(["cat", "--help"])
    out = capsys.readouterr().out
    assert "--no-train" in out and "--no-no-train" not in out
