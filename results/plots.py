"""Figures of the results: the per-layer ImageNet linear probes of Table 2 as curves."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Iterable, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cpfs_bench.results.tables import OURS_BLOCK, build_table, describe_protocol

#: The paper's Table 2 rows drawn as dashed references.
PAPER_REFERENCE_ROWS = ("Krizhevsky et al. [30]", "Random", "CPFS-CE", "CPFS-CE-rev", "CPFS-KTA", "Ours direct cls.")
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


def _points(row: Mapping, layers: list[str]) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i, layer in enumerate(layers, 1):
        v = row[layer]
        if v is not None and not math.isnan(v):
            xs.append(i)
            ys.append(float(v))
    return xs, ys


def plot_linear_probes(records: Iterable[Mapping], png_path: str | os.PathLike, include_paper: bool = True) -> Path:
    """Write a PNG of top-1 % per layer (conv1..conv5), one panel per dataset: the paper's ImageNet
    panel holds our rows measured on the paper's evaluation set (solid lines with markers, the latest
    record per cell, as in Table 2) and, when `include_paper`, the paper's CPFS rows, Random and
    Krizhevsky et al. as dashed, lighter references; each other dataset (the embedded world, a
    subset) gets a panel of its own, titled with it, so its numbers never sit on the paper's axes.
    A row of ours whose method matches a paper row (case-insensitively) shares its colour; the legend
    names each run and its protocol. Raises ValueError when there is nothing to plot. Returns the path.

    Uses the Agg canvas directly (no pyplot), so it neither needs a display nor changes the
    caller's matplotlib backend.
    """
    df = build_table(records, 2)
    layers = df.attrs["value_columns"]
    protocols = df.attrs["protocols"]
    ours = [r for r in df.to_dict("records") if r["source"] == "ours" and _points(r, layers)[0]]
    paper = [r for r in df.to_dict("records") if r["source"] == "paper" and r["method"] in PAPER_REFERENCE_ROWS]
    if not ours and not include_paper:
        raise ValueError("nothing to plot: no ImageNet linear-probe records (task 'imagenet_linear', "
                         "metric 'top1', layer conv1..conv5) and include_paper is off")
    blocks = list(dict.fromkeys([OURS_BLOCK] * (include_paper or any(r["block"] == OURS_BLOCK for r in ours))
                                + [r["block"] for r in ours]))

    colour: dict[str, str] = {}
    for r in ours:
        colour.setdefault(r["method"].casefold(), _PALETTE[len(colour) % len(_PALETTE)])

    fig = Figure(figsize=(9 * len(blocks), 7), dpi=100)
    FigureCanvasAgg(fig)
    for k, block in enumerate(blocks):
        ax = fig.add_subplot(1, len(blocks), k + 1)
        for r in (r for r in ours if r["block"] == block):
            xs, ys = _points(r, layers)
            cells = protocols.get(r["run"], {})
            names = list(dict.fromkeys(describe_protocol(c["protocol"], c["deviations"]) for c in cells.values()))
            proto = names[0] if len(names) == 1 else "several protocols"
            ax.plot(xs, ys, linestyle="-", marker="o", linewidth=2.0, color=colour[r["method"].casefold()],
                    label=textwrap.fill(f"{r['method']}, run {r['run']} (ours; {proto})", 60), zorder=3)
        if block == OURS_BLOCK and include_paper:
            for r in paper:
                key = r["method"].casefold()
                colour.setdefault(key, _PALETTE[len(colour) % len(_PALETTE)])
                xs, ys = _points(r, layers)
                ax.plot(xs, ys, linestyle="--", marker=".", linewidth=1.2, alpha=0.45, color=colour[key],
                        label=f"{r['method']} (paper)")
        ax.set_xticks(range(1, len(layers) + 1), layers)
        ax.set_xlim(0.7, len(layers) + 0.3)
        ax.set_xlabel("layer (frozen trunk, linear probe)")
        ax.set_ylabel("top-1 accuracy (%)")
        title = ("ImageNet (ILSVRC-12 val, 1000 classes): the paper's Table 2" if block == OURS_BLOCK
                 else block.replace(f"{OURS_BLOCK} on ", "Measured on "))
        ax.set_title(textwrap.fill(title, 70), fontsize=10)
        ax.grid(True, alpha=0.3)
        # below the axes: long protocol descriptions would otherwise squeeze the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, format="png")
    return png_path
