"""The code style the project is configured for (``[tool.ruff]`` in pyproject.toml) holds."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["hfpl_jax", "tests", "scripts", "configs"]


def _ruff() -> list[str]:
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    return [ruff]


def test_ruff_lint_passes():
    result = subprocess.run(
        [*_ruff(), "check", *PATHS], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied():
    result = subprocess.run(
        [*_ruff(), "format", "--check", *PATHS], cwd=REPO, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
