"""Training curves: log.jsonl of a pretraining run -> a PNG of loss (raw and smoothed) and sigma."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def plot_training_log(log_path, png_path, title: str = "") -> Path:
    """Read the JSON-lines log (step, loss, sigma, ...) and write a two-panel figure to png_path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    sigma = np.array([r["sigma"] for r in records])
    window = max(1, len(loss) // 20)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(steps, loss, color="0.75", lw=0.8, label="loss")
    a.plot(steps[window - 1:], smooth, color="C0", lw=2, label=f"mean of {window}")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(steps, sigma, color="C1")
    b.set_xlabel("step")
    b.set_ylabel("flow-kernel sigma")
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
