"""The package list, found rather than written by hand: each top-level folder installs under `attn_onnx`
(models/ is attn_onnx.models), with every subpackage below it. Everything else is in pyproject.toml.

A new subfolder with an __init__.py is in the wheel without an edit here; tests/test_layout.py builds the
wheel and imports every module from it."""

from setuptools import find_packages, setup

# installed name -> the folder it lives in (the short names never install: no clash with a user's `models`)
FOLDERS = {
    "attn_onnx": "attn_onnx",
    "attn_onnx.models": "models",
    "attn_onnx.exporter": "exporter",
    "attn_onnx.runtime_check": "runtime_check",
    "attn_onnx.timing": "timing",
    "attn_onnx.deploy": "deploy",
    "attn_onnx.bench": "bench",
    "attn_onnx.cli": "cli",
}

packages = [name for name in FOLDERS] + [
    f"{name}.{sub}" for name, folder in FOLDERS.items() for sub in find_packages(folder)
]
setup(packages=packages, package_dir=FOLDERS, package_data={"attn_onnx.deploy": ["*.json"]})
