"""Training curves, for every loop (bench.runs.TrainingRun draws them at a run's end):
- `plot_loss_curve`: a log.jsonl's loss per step, raw and as a moving mean;
- `plot_training_log`: a pretraining run's loss (for the CE losses also the KL to their target, which
  is what moves), the embeddings' mean pairwise cosine (collapse shows as a climb to 1) and sigma."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def moving_mean(values: np.ndarray) -> tuple[int, np.ndarray]:
    """(window, means of `window` consecutive values): the window is ~1/20 of the run, so the curve reads the
    same at 100 and at 100k steps. The means stand at the window's last step: x[window - 1:]."""
    window = max(1, len(values) // 20)
    return window, np.convolve(values, np.ones(window) / window, mode="valid")


def _smoothed(ax, steps, values, label, colour):
    window, means = moving_mean(values)
    ax.plot(steps, values, color="0.75", lw=0.8)
    ax.plot(steps[window - 1:], means, color=colour, lw=2, label=f"{label} (mean of {window})")
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


def plot_loss_curve(log_path: str | Path, png_path: str | Path, key: str = "iter",
                    value: str = "loss", title: str = "") -> Path:
    """A fine-tuning log (JSON lines with `key` and `value`) -> PNG of the loss per iteration, raw and
    as a moving mean over ~1/20 of the run."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if key in r and value in r]
    x = np.array([r[key] for r in rows], float)
    y = np.array([r[value] for r in rows], float)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(x, y, color="0.7", lw=0.8, label=value)
    window, means = moving_mean(y)
    if len(y) >= window:
        ax.plot(x[window - 1:], means, color="C0", lw=2, label=f"mean of {window}")
    ax.set_xlabel(key)
    ax.set_ylabel(value)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
    return Path(png_path)
