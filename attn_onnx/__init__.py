"""attn-onnx: take the Transformer's attention modules from PyTorch to ONNX, and prove nothing changed.

The installed packages live under this one namespace, so that their short names cannot clash with a
user's own `models` or `exporter`:

    attn_onnx                 the shared base: version, errors, atomic files (this folder)
    attn_onnx.models          the seed's PyTorch modules and the wrappers that are exported   (models/)
    attn_onnx.exporter        specs, module kinds, graph variants, weights, the export        (exporter/)
    attn_onnx.runtime_check   cases, runners, comparison, reports, plots                      (runtime_check/)
    attn_onnx.deploy          the bundle and the Triton model repository                      (deploy/)
    attn_onnx.bench           bench-attn's measurements and plot                              (bench/)
    attn_onnx.cli             export-attn, check-attn and bench-attn                          (cli/)

Each imports only the ones above it in this list (deploy and bench sit side by side).
"""

__version__ = "0.2.0"


def _source_checkout() -> None:
    """Run from a source checkout without installing (`PYTHONPATH=repo`, as on a machine with no package
    index): the sibling folders models/, exporter/, runtime_check/, deploy/, bench/, cli/ are this package's
    subpackages, as the installed wheel lays them out. An installed copy has them inside this folder and skips this."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if (
        os.path.isfile(os.path.join(root, "pyproject.toml"))
        and os.path.isfile(os.path.join(root, "models", "attention.py"))
        and root not in __path__
    ):
        __path__.append(root)


_source_checkout()
