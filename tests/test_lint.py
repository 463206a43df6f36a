"""The repository passes ``ruff check`` with the rules configured in pyproject.toml ([tool.ruff])."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO


def _ruff_command() -> list[str] | None:
    """The ruff of this environment: the binary next to the interpreter, else ``python -m ruff``."""
    scripts = Path(sys.executable).parent
    for name in ("ruff", "ruff.exe"):
        if (scripts / name).is_file():
            return [str(scripts / name)]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return None


def test_ruff_check_is_clean():
    cmd = _ruff_command()
    if cmd is None:
        pytest.skip("ruff is not installed in this environment (pip install -e '.[dev]')")
    proc = subprocess.run([*cmd, "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"
