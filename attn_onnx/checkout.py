"""Where the source checkout is: its examples/ (the Node, web and C++ consumers) and .deps/ (what
scripts/setup-tests.sh installs: onnxruntime releases, Triton, the C++ build). The one place that knows.

From a checkout (`pip install -e .`, or running in it) that is the folder above this package. A wheel install
has no checkout beside it: set ATTN_ONNX_CHECKOUT to one, else `path()` still answers (a path that does not
exist) and `note()` says why, so that a "not installed" error names the real cause.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "ATTN_ONNX_CHECKOUT"


def root() -> Path | None:
    """$ATTN_ONNX_CHECKOUT, else the checkout this package lies in; None from a wheel install without it."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    above = Path(__file__).resolve().parents[1]
    return above if (above / "pyproject.toml").is_file() and (above / "examples").is_dir() else None


def path(*parts: str) -> Path:
    """`parts` inside the checkout (examples/web, .deps/onnxruntime); from a wheel without one, the same
    parts under $ATTN_ONNX_CHECKOUT's name, which does not exist."""
    return (root() or Path(f"${ENV}")).joinpath(*parts)


def note() -> str:
    """'' in a checkout; else why its examples and .deps are absent, for the end of an error."""
    if root() is not None:
        return ""
    return (
        f" (attn-onnx is installed without its source checkout, which holds examples/ and .deps/: set {ENV} "
        "to a checkout's folder)"
    )
