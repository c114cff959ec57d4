"""The habits CI keeps: ruff (lint and format), mypy and eslint clean, each with the configuration the repository
chooses (pyproject.toml's [tool.ruff] and [tool.mypy]; examples/lint/eslint.config.mjs). Each tool is also shown
to fail on a planted finding, so a clean run means something."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.house import TOPS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "pyproject.toml")


def _run(*command, cwd=ROOT, **kwargs):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)


def test_ruff_finds_nothing():
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_ruff_format_would_change_nothing():
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_ruff_with_the_projects_rules_fails_a_planted_finding(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n\n\ndef f(items):\n    return [lambda: i for i in items]\n")
    result = _run(sys.executable, "-m", "ruff", "check", "--config", CONFIG, str(planted))
    assert result.returncode == 1 and "F401" in result.stdout and "B023" in result.stdout, result.stdout


def _layout(folder: Path) -> Path:
    """The folders as setup.py installs them (models/ is attn_onnx.models), linked: what mypy reads."""
    package = folder / "attn_onnx"
    package.mkdir(parents=True)
    for path in (ROOT / "attn_onnx").glob("*.py"):
        (package / path.name).symlink_to(path)
    for top in TOPS:
        if top != "attn_onnx":
            (package / top).symlink_to(ROOT / top)
    return folder


def _mypy(layout: Path):
    return _run(
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        CONFIG,
        "--cache-dir",
        str(layout / ".mypy_cache"),
        "-p",
        "attn_onnx",
        cwd=layout,
        env={"MYPYPATH": str(layout), "PATH": "/usr/bin:/bin"},
    )


def test_mypy_finds_nothing(tmp_path):
    result = _mypy(_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_mypy_with_the_projects_config_fails_a_planted_finding(tmp_path):
    layout = _layout(tmp_path)
    (layout / "attn_onnx" / "planted.py").write_text("def width(heads: int) -> int:\n    return heads / 2\n")
    result = _mypy(layout)
    assert result.returncode == 1 and "planted.py:2: error" in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(
    shutil.which("npm") is None or shutil.which("node") is None,
    reason="node and npm are absent: eslint cannot run (scripts/setup-tests.sh installs it)",
)
def test_eslint_finds_nothing_in_the_examples():
    result = _run("bash", str(ROOT / "scripts" / "lint-js.sh"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "eslint: examples/ clean" in result.stdout
