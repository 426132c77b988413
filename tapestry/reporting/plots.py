"""Matplotlib figures for the report, rendered headless (Agg) to PNG bytes."""
from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend: reports are written on servers and in CI, where no display exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()


def loss_curves_png(histories: dict[str, list[float]]) -> bytes:
    """Per-epoch training loss, one panel per model (losses of different models are not on one scale)."""
    plt = pyplot()
    names = [n for n, h in histories.items() if h]
    cols = min(3, max(len(names), 1))
    rows = (len(names) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        h = histories[name]
        ax.plot(range(1, len(h) + 1), h, marker="o", markersize=3, color="#C44E52")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
    return png_bytes(fig)


def latency_histograms_png(samples: dict[str, list[float]]) -> bytes:
    """Request latency per serving path (ms), with p50/p99 marked."""
    import numpy as np

    plt = pyplot()
    names = [n for n, s in samples.items() if s]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4 * max(len(names), 1), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        a = np.asarray(samples[name])
        ax.hist(a, bins=40, color="#4C72B0")
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(a, q))
            ax.axvline(v, color="k", linestyle=style, linewidth=1, label=f"p{q} {v:.2f} ms")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    return png_bytes(fig)
