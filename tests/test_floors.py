"""The security floors of the README hold: declared in pyproject.toml and met by what is installed."""

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"torch": (2, 10), "onnx": (1, 21)}  # CVE-2026-24747; CVE-2026-27489, -34447, -34446, -34445


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2])


@pytest.mark.parametrize("package", FLOORS)
def test_the_floor_is_declared_and_met(package):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if d.split("=")[0].split(">")[0].strip() == package)
    declared = spec.split("==")[-1] if "==" in spec else spec.split(">=")[-1]
    assert ">=" in spec or "==" in spec, spec
    assert _release(declared) >= FLOORS[package], spec
    assert _release(version(package)) >= FLOORS[package]


def test_the_readme_names_the_fixes():
    readme = (ROOT / "docs" / "reliability.md").read_text()
    for cve in ("CVE-2026-24747", "CVE-2026-27489", "CVE-2026-34447", "CVE-2026-34446", "CVE-2026-34445"):
        assert cve in readme
