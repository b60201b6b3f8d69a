"""rows.png: the experiment's paired differences as bars with their intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_rows(result: dict[str, Any], path: Path) -> None:
    """The paired difference of each method row against its control, with 95% intervals,
    one panel per labeled-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = result["tables"]
    fig, axes = plt.subplots(1, len(sections), figsize=(5.5 * len(sections), 4.2), squeeze=False)
    for ax, section in zip(axes[0], sections, strict=True):
        entries = [(n, e["vs_control"]) for n, e in section["summary"].items() if "vs_control" in e]
        names = [n for n, _ in entries]
        means = [100 * d["mean"] for _, d in entries]
        low = [100 * (d["mean"] - d["ci95"][0]) if d["ci95"] else 0.0 for _, d in entries]
        high = [100 * (d["ci95"][1] - d["mean"]) if d["ci95"] else 0.0 for _, d in entries]
        ax.bar(range(len(names)), means, yerr=[low, high], capsize=4, color="#1f77b4")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("Δ test macro-F1 vs its control (x100)")
        ax.set_title(f"{section['labeled_size']} labeled texts, 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
