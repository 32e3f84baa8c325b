import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from circuit_reuse.figures import head_grid, save_figure, use_style, write_table  # noqa: E402


def test_stems_with_a_dot_keep_it(tmp_path):
    use_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    written = save_figure(fig, tmp_path / "head_grids" / "gpt2.ioi")
    assert [p.name for p in written] == ["gpt2.ioi.pdf", "gpt2.ioi.png"]
    written = write_table(pd.DataFrame({"a": [1.0]}), tmp_path / "t.v1", caption="c")
    assert [p.name for p in written] == ["t.v1.csv", "t.v1.tex"]
    assert save_figure(plt.figure(), tmp_path / "x.png")[1].name == "x.png"


def test_figures_are_byte_stable(tmp_path):
    use_style()
    grid = np.array([[0.5, -0.25], [np.nan, 0.0]])
    for run in ("one", "two"):
        fig, ax = plt.subplots()
        fig.colorbar(head_grid(ax, grid, [(0, 0)]), ax=ax)
        save_figure(fig, tmp_path / run)
    for ext in (".pdf", ".png"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()


def test_head_grid_is_symmetric_and_survives_an_all_nan_grid():
    use_style()
    fig, (ax1, ax2) = plt.subplots(1, 2)
    image = head_grid(ax1, np.array([[0.5, -2.0], [np.nan, 1.0]]), [(0, 1)])
    assert image.get_clim() == (-2.0, 2.0)
    assert len(ax1.patches) == 1
    assert head_grid(ax2, np.full((24, 16), np.nan)).get_clim() == (-1.0, 1.0)
    plt.close(fig)
