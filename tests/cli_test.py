"""The console-script dispatcher."""

import subprocess
import sys

from hfpl_jax import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_is_an_error_that_names_it(capsys):
    assert cli.main(["no-such-stage"]) == 2
    assert "'no-such-stage'" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hfpl_jax.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "train-cam" in result.stdout
