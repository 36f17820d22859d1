"""Training curves: log.jsonl of a pretraining run -> a PNG of the loss (raw and smoothed; for the CE
losses also the KL to their target, which is what moves), the embeddings' mean pairwise cosine
(collapse shows as a climb to 1) and sigma."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _smoothed(ax, steps, values, label, colour):
    window = max(1, len(values) // 20)
    ax.plot(steps, values, color="0.75", lw=0.8)
    ax.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid"), color=colour, lw=2,
            label=f"{label} (mean of {window})")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_training_log(log_path, png_path, title: str = "") -> Path:
    """Read the JSON-lines log (step, loss, sigma, mean_cos, kl, ...) and write the figure to png_path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in records])
    panels = [("loss", "loss", "C0")]
    if all("kl" in r for r in records):
        panels.append(("kl", "KL(target || prediction) = loss - target entropy", "C3"))
    if all("mean_cos" in r for r in records):
        panels.append(("mean_cos", "mean pairwise embedding cosine", "C2"))
    panels.append(("sigma", "flow-kernel sigma", "C1"))
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, (key, label, colour) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        values = np.array([r[key] for r in records], dtype=float)
        if key == "sigma":
            ax.plot(steps, values, color=colour)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if np.ptp(values) == 0:
                label = f"{label} (fixed at {values[0]:.4g})"
        else:
            _smoothed(ax, steps, values, key, colour)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    return png_path
