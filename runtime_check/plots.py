"""Pictures for a person: the mask (drawn as the seed draws subsequent_mask(20)), the attention
probabilities from PyTorch and from the runtime side by side, and their absolute difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporter.errors import UsageError
from exporter.export import write_atomic

FIGSIZE, DPI = (5.0, 5.0), 100  # fixed, so every PNG has a known size: 500 x 500, side by side 1000 x 500
PLOT_FILES = {"mask.png": (500, 500), "attn_probs.png": (1000, 500), "attn_diff.png": (500, 500)}


def write_plots(out_dir: Path, case_name: str, mask: np.ndarray | None, golden_probs: np.ndarray,
                runtime_probs: np.ndarray, runtime_name: str) -> list[Path]:
    """Write the PNGs of PLOT_FILES for the last example (the padded one, the one with the fully-masked row),
    head 0, of one case; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        raise UsageError("--plots needs matplotlib (pip install '.[plots]')") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    example = golden_probs.shape[0] - 1
    golden, runtime = golden_probs[example, 0], runtime_probs[example, 0]  # (q_len, kv_len)
    if mask is None:
        mask_2d = np.ones_like(golden, dtype=np.uint8)
        mask_title = f"{case_name}\nno mask input"
    else:
        mask_3d = np.asarray(mask, dtype=np.float64).reshape(mask.shape[0], -1, mask.shape[-1])
        mask_2d = np.broadcast_to(mask_3d[example], golden.shape)  # a padding mask covers every query
        mask_title = f"{case_name}\nmask of example {example} (yellow = attend, 0 = masked)"

    written = []

    def save(fig, name):
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        plt.close(fig)
        path = out_dir / name
        write_atomic(path, buffer.getvalue(), force=True)
        written.append(path)

    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.imshow(mask_2d, vmin=0, vmax=1)
    ax.set(title=mask_title, xlabel="key position", ylabel="query position")
    fig.tight_layout()
    save(fig, "mask.png")

    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGSIZE[0], FIGSIZE[1]))
    for ax, probs, title in ((axes[0], golden, "PyTorch float64"), (axes[1], runtime, runtime_name)):
        image = ax.imshow(probs, vmin=0, vmax=max(float(golden.max()), 1e-12))
        ax.set(title=f"attn_probs, {title}\nexample {example}, head 0", xlabel="key position",
               ylabel="query position")
    fig.tight_layout()
    fig.colorbar(image, ax=axes, shrink=0.8)
    save(fig, "attn_probs.png")

    fig, ax = plt.subplots(figsize=FIGSIZE)
    diff = np.abs(runtime.astype(np.float64) - golden)
    image = ax.imshow(diff)
    ax.set(title=f"|{runtime_name} - PyTorch float64|\nmax {diff.max():.2g}", xlabel="key position",
           ylabel="query position")
    fig.colorbar(image, ax=ax, shrink=0.8)
    save(fig, "attn_diff.png")
    return written
