"""Pictures for a person: the mask (drawn as the seed draws subsequent_mask(20)), the attention
probabilities from PyTorch and from the runtime side by side, and their absolute difference against the
tolerance. One example and one head of one case; every title names them, every file name carries the case."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from attn_onnx.errors import UsageError
from attn_onnx.files import write_atomic

FIGSIZE, DPI = (5.0, 5.0), 100  # fixed, so every PNG has a known size: 500 x 500, side by side 1000 x 500
PLOT_FILES = {"mask": (500, 500), "attn_probs": (1000, 500), "attn_diff": (500, 500)}  # suffix -> pixels


def plot_names(case_name: str) -> list[str]:
    """The files written for a case: `<case>.mask.png`, `<case>.attn_probs.png`, `<case>.attn_diff.png`."""
    return [f"{case_name}.{suffix}.png" for suffix in PLOT_FILES]


def write_plots(
    out_dir: Path,
    case_name: str,
    mask: np.ndarray | None,
    golden_probs: np.ndarray,
    runtime_probs: np.ndarray,
    runtime_name: str,
    *,
    example: int,
    head: int,
    tolerance,
) -> list[Path]:
    """Write the PNGs of PLOT_FILES for `example` and `head` of one case; return their paths."""
    figures = draw(
        case_name, mask, golden_probs, runtime_probs, runtime_name, example=example, head=head, tolerance=tolerance
    )
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        plt.close(fig)
        path = out_dir / f"{case_name}.{suffix}.png"
        write_atomic(path, buffer.getvalue(), force=True)
        written.append(path)
    return written


def draw(
    case_name: str,
    mask: np.ndarray | None,
    golden_probs: np.ndarray,
    runtime_probs: np.ndarray,
    runtime_name: str,
    *,
    example: int,
    head: int,
    tolerance,
) -> dict:
    """The figures of PLOT_FILES (suffix -> matplotlib Figure), unsaved."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UsageError("--plots needs matplotlib (pip install '.[plots]')") from None
    batch, heads = golden_probs.shape[:2]
    if not 0 <= example < batch:
        raise UsageError(f"--plot-example {example} is out of range: case {case_name} has batch {batch}")
    if not 0 <= head < heads:
        raise UsageError(f"--plot-head {head} is out of range: the model has {heads} heads")
    golden, runtime = golden_probs[example, head], runtime_probs[example, head]  # (q_len, kv_len)
    where = f"{case_name}, example {example}, head {head}"
    if mask is None:
        mask_2d, mask_title = np.ones_like(golden, dtype=np.uint8), f"{case_name}\nno mask input"
    else:
        mask_3d = np.asarray(mask, dtype=np.float64).reshape(mask.shape[0], -1, mask.shape[-1])
        mask_2d = np.broadcast_to(mask_3d[example] != 0, golden.shape)  # a padding mask covers every query
        mask_title = f"{case_name}, example {example}\nmask (yellow = attend, purple = masked)"

    def axes_in_positions(ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole numbers
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="key position", ylabel="query position")

    figures = {}

    def keep(fig, suffix):
        figures[suffix] = fig

    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.imshow(mask_2d, vmin=0, vmax=1)
    ax.set_title(mask_title)
    axes_in_positions(ax)
    fig.tight_layout()
    keep(fig, "mask")

    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGSIZE[0], FIGSIZE[1]))
    for ax, probs, who in ((axes[0], golden, "PyTorch float64"), (axes[1], runtime, runtime_name)):
        image = ax.imshow(probs, vmin=0, vmax=max(float(golden.max()), 1e-12))
        ax.set_title(f"attn_probs, {who}\n{where}")
        axes_in_positions(ax)
    fig.tight_layout()
    fig.colorbar(image, ax=axes, shrink=0.8)
    keep(fig, "attn_probs")

    fig, ax = plt.subplots(figsize=FIGSIZE)
    diff = np.abs(runtime.astype(np.float64) - golden)
    allowed = tolerance.atol + tolerance.rtol * np.abs(golden)
    beyond = int(np.count_nonzero(diff > allowed))
    image = ax.imshow(diff, vmin=0, vmax=max(float(diff.max()), tolerance.atol))
    rows, cols = np.nonzero(diff > allowed)
    ax.scatter(cols, rows, marker="x", color="red", s=12, label="beyond tolerance")  # none when it passes
    ax.set_title(
        f"|{runtime_name} - PyTorch|, {where}\nmax {diff.max():.2g}; atol={tolerance.atol:g} "
        f"rtol={tolerance.rtol:g}: {beyond} beyond",
        fontsize=9,
    )
    axes_in_positions(ax)
    fig.colorbar(image, ax=ax, shrink=0.8)
    keep(fig, "attn_diff")
    return figures
