"""Plotting: matplotlib without a display, and the heatmap of one accuracy matrix."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only: no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(matrix: list[list[float]], title: str, path: Path) -> None:
    """One accuracy matrix (rows: checkpoints c_0..c_T, columns: tasks 1..T) as a PNG."""
    plt = pyplot()

    rows, cols = len(matrix), len(matrix[0])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * cols, 1.0 + 0.6 * rows))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(cols), [f"T{j + 1}" for j in range(cols)])
    ax.set_yticks(range(rows), [f"c_{i}" for i in range(rows)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("checkpoint")
    ax.set_title(title, fontsize=10)
    for i in range(rows):
        for j in range(cols):
            value = matrix[i][j]
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value > 0.6 else "white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
