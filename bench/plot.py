"""bench-attn's PNG: median latency per shape for each contender (log scale), one panel per thread count."""

from __future__ import annotations

import io

from attn_onnx.errors import UsageError


def require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install '.[plots]')")


def draw(bench) -> bytes:
    """The figure as PNG bytes."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(bench.threads), figsize=(7 * len(bench.threads), 4.5), squeeze=False)
    for ax, n in zip(axes[0], bench.threads):
        rows = [t for t in bench.timings if t.threads == n]
        shapes = list(dict.fromkeys((t.batch, t.length) for t in rows))
        contenders = list(dict.fromkeys(t.contender for t in rows))
        width = 0.8 / len(contenders)
        for i, name in enumerate(contenders):
            ms = {(t.batch, t.length): t.median_ms for t in rows if t.contender == name}
            ax.bar([s + i * width for s in range(len(shapes))], [ms[s] for s in shapes], width, label=name)
        ax.set_xticks([s + 0.4 - width / 2 for s in range(len(shapes))], [f"({b},{n_})" for b, n_ in shapes])
        ax.set_yscale("log")
        ax.set_xlabel("(batch, len)")
        ax.set_ylabel("median latency, ms (log)")
        ax.set_title(f"{bench.cpu}, {n} thread(s); sgemm limit {bench.sgemm_gflops[n]:.0f} GFLOP/s", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"attention, width {bench.embedding_dim}, {bench.heads} heads, causal+padding mask, float32 unless marked @"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
