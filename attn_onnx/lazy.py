"""Names a package exports but imports only on first use, so that a CLI's `--help` answers without
importing torch or onnxruntime:

    __getattr__ = lazy_names(__name__, {"check_model": "attn_onnx.runtime_check.check", ...})
"""

import importlib


def lazy_names(package: str, names: dict[str, str]):
    """A module-level `__getattr__` for `package`: each of `names` (name -> its module) imported when asked for."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
