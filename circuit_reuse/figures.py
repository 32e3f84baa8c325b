"""Figures and tables as the notebooks write them: one style, byte-stable files, CSV and LaTeX side by side.

Every figure is saved as PDF and PNG with no creation date, producer or software version in its metadata,
so a rerun on the same inputs writes the same bytes and Snakemake, git and reviewers see no spurious change.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

# Okabe-Ito-derived and safe for the common colour-vision deficiencies; the diverging map for signed scores
# is blue-to-red, which stays distinguishable without red-green contrast.
PALETTE = sns.color_palette("colorblind")
DIVERGING_CMAP = "RdBu_r"
SEQUENTIAL_CMAP = "cividis"

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


def save_figure(fig: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Write `fig` to `{stem}.pdf` and `{stem}.png` without timestamps, close it, return the two paths."""
    path = _stem(stem)
    pdf, png = path.with_suffix(".pdf"), path.with_suffix(".png")
    fig.savefig(pdf, metadata=_PDF_METADATA)
    fig.savefig(png, metadata=_PNG_METADATA)
    plt.close(fig)
    return [pdf, png]


def write_table(table: pd.DataFrame, stem: str | os.PathLike, caption: str, float_digits: int = 3) -> list[Path]:
    """Write `table` to `{stem}.csv` (full precision) and `{stem}.tex` (rounded, with `caption`)."""
    path = _stem(stem)
    csv, tex = path.with_suffix(".csv"), path.with_suffix(".tex")
    table.to_csv(csv, index=False)
    latex = table.to_latex(index=False, float_format=f"%.{float_digits}f", caption=caption, na_rep="--")
    tex.write_text(latex)
    return [csv, tex]
