"""attn_onnx/checkout.py: the one place that knows where the checkout's examples/ and .deps/ are."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attn_onnx import checkout
from attn_onnx.errors import ProviderError
from attn_onnx.runtime_check.runners import web_runner

ROOT = Path(__file__).resolve().parents[1]


def test_from_the_checkout_it_is_the_checkout(monkeypatch):
    monkeypatch.delenv(checkout.ENV, raising=False)
    assert checkout.root() == ROOT and checkout.note() == ""
    assert checkout.path(".deps", "onnxruntime") == ROOT / ".deps" / "onnxruntime"


def test_an_installed_copy_without_a_checkout_says_so_and_the_variable_names_one(tmp_path):
    """The module as a wheel installs it (site-packages/attn_onnx/checkout.py, nothing above but packages)."""
    site = tmp_path / "site"
    (site / "attn_onnx").mkdir(parents=True)
    shutil.copy(ROOT / "attn_onnx" / "checkout.py", site / "attn_onnx" / "checkout.py")
    (site / "attn_onnx" / "__init__.py").write_text("")
    code = (
        "from attn_onnx import checkout\n"
        "print(checkout.root()); print(checkout.path('examples', 'web')); print(checkout.note())"
    )

    def run(env):
        return subprocess.run(
            [sys.executable, "-S", "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(site), **env},
            check=True,
        ).stdout.splitlines()

    root, web, note = run({})
    assert root == "None" and web == "$ATTN_ONNX_CHECKOUT/examples/web"
    assert "installed without its source checkout" in note and "ATTN_ONNX_CHECKOUT" in note
    root, web, note = run({"ATTN_ONNX_CHECKOUT": str(ROOT)})
    assert (root, web, note) == (str(ROOT), str(ROOT / "examples" / "web"), "")


def test_a_runtime_missing_for_want_of_a_checkout_says_that(monkeypatch, tmp_path):
    monkeypatch.setattr(checkout, "root", lambda: None)
    monkeypatch.setattr(web_runner, "WEB_DIR", tmp_path)
    monkeypatch.setattr(web_runner.shutil, "which", lambda name: "/usr/bin/node")
    with pytest.raises(ProviderError, match="installed without its source checkout.*ATTN_ONNX_CHECKOUT"):
        web_runner._find()
