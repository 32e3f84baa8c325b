"""Figures and tables as the notebooks write them: one style, byte-stable files, CSV and LaTeX side by side.

Every figure is saved as PDF and PNG with no creation date, producer or software version in its metadata,
so a rerun on the same inputs writes the same bytes and Snakemake, git and reviewers see no spurious change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

# Okabe-Ito-derived and safe for the common colour-vision deficiencies; the diverging map for signed scores
# is blue-to-red, which stays distinguishable without red-green contrast.
PALETTE = sns.color_palette("colorblind")
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "cividis"
# Cells with no value (heads outside a stage's sender set) in every head grid.
MISSING_COLOUR = "0.82"
# The sign convention: > 0 moves the logit difference toward the corrupted run's (the authors plot -100 x score).
SCORE_LABEL = "score: fraction of the clean\u2192corrupt\nlogit-difference change\n(> 0: toward corrupt)"

_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
_PNG_METADATA = {"Software": None}


def use_style() -> None:
    """The house style: seaborn's paper context, the colour-blind palette, fonts embedded as TrueType."""
    matplotlib.use("Agg")
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE)
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 200,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
            "svg.hashsalt": "circuit-reuse",
            "axes.titlesize": "medium",
        }
    )


def _stem(stem: str | os.PathLike) -> Path:
    path = Path(stem)
    if path.suffix in {".pdf", ".png", ".csv", ".tex"}:
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _with_extension(stem: Path, extension: str) -> Path:
    """`stem` plus `extension`, keeping any dot in the stem ("head_grids/gpt2.ioi" -> "head_grids/gpt2.ioi.png")."""
    return stem.with_name(stem.name + extension)


def save_figure(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Write `fig` to `{stem}.pdf` and `{stem}.png` without timestamps, close it, return the two paths."""
    path = _stem(stem)
    pdf, png = _with_extension(path, ".pdf"), _with_extension(path, ".png")
    fig.savefig(pdf, metadata=_PDF_METADATA)
    fig.savefig(png, metadata=_PNG_METADATA)
    plt.close(fig)
    return [pdf, png]


def write_table(table: pd.DataFrame, stem: str | os.PathLike, caption: str, float_digits: int = 3) -> list[Path]:
    """Write `table` to `{stem}.csv` (full precision) and `{stem}.tex` (rounded, with `caption`)."""
    path = _stem(stem)
    csv, tex = _with_extension(path, ".csv"), _with_extension(path, ".tex")
    table.to_csv(csv, index=False)
    latex = table.to_latex(index=False, float_format=f"%.{float_digits}f", caption=caption, na_rep="--")
    tex.write_text(latex)
    return [csv, tex]


def grid_ticks(n: int, most: int = 24) -> list[int]:
    """Tick positions 0..n-1 for a grid axis, every one when there are at most `most`, else a regular subset."""
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step))


def grid_panel_size(n_layers: int, n_heads: int, cell: float = 0.2, least: float = 1.8) -> tuple[float, float]:
    """Width and height (inches) of one layer x head panel, without its colorbar: `cell` inches a head."""
    return max(least, n_heads * cell), max(least, n_layers * cell)


def head_grid(
    ax: plt.Axes,
    grid: np.ndarray,
    selected: Iterable[tuple[int, int]] = (),
    vmax: float | None = None,
    cmap: str = DIVERGING_CMAP,
    box_colour: str = "black",
    box_width: float = 1.4,
) -> AxesImage:
    """Draw a [layer, head] grid: layer 0 at the top, NaN cells grey, each selected head boxed.

    The colour scale is symmetric about 0, from -vmax to vmax; by default vmax is the grid's largest
    |value| (1 when the grid is empty or all zero), so the diverging map's white is exactly 0.
    """
    grid = np.asarray(grid, dtype=float)
    n_layers, n_heads = grid.shape
    if vmax is None:
        finite = np.abs(grid[np.isfinite(grid)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    colours = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOUR)
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap=colours, vmin=-vmax, vmax=vmax, aspect="equal", interpolation="nearest"
    )
    for layer, head in selected:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=box_colour, linewidth=box_width))
    ax.set_xticks(grid_ticks(n_heads))
    ax.set_yticks(grid_ticks(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.grid(False)
    ax.set_xlim(-0.5, n_heads - 0.5)
    ax.set_ylim(n_layers - 0.5, -0.5)
    return image
