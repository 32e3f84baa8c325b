"""Every analysis notebook runs on its own under papermill, with its default parameters (the example data),
and writes the figure and table its parameters name; the figure and table writers are byte-stable."""

from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import papermill
import pytest

from circuit_reuse.figures import save_figure, use_style, write_table
from circuit_reuse.notebooks import run_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_NAMES = sorted(path.name for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_the_twelve_figure_families_have_a_notebook():
    assert [name[:2] for name in NOTEBOOK_NAMES] == [f"{i:02d}" for i in range(1, 13)]


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs_with_its_defaults(name, tmp_path):
    declared = papermill.inspect_notebook(str(NOTEBOOKS / name))
    assert "figure" in declared, f"{name} has no `figure` parameter"
    outputs = {key: str(tmp_path / key) for key in ("figure", "table") if key in declared}
    executed = run_notebook(NOTEBOOKS / name, tmp_path / name, outputs, cwd=NOTEBOOKS)
    assert executed.is_file()
    for suffix in (".pdf", ".png"):
        assert (tmp_path / f"figure{suffix}").stat().st_size > 1000
    if "table" in outputs:
        assert len(pd.read_csv(tmp_path / "table.csv")) > 0
        assert "\\begin{table}" in (tmp_path / "table.tex").read_text()


def test_a_notebook_kernel_runs_encrypted_and_without_transport_warnings(tmp_path, capfd):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("answer = 6 * 7\nprint(answer)")]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    executed = run_notebook(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {}, cwd=tmp_path)
    assert nbformat.read(executed, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    # The kernel is a child process writing to this process's stderr, where its warnings would land.
    assert "without encryption" not in capfd.readouterr().err


def _figure():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2], label="a line")
    ax.set_xlabel("x (units)")
    ax.legend()
    return fig


def test_saved_figures_are_byte_identical_across_saves(tmp_path):
    use_style()
    first = save_figure(_figure(), tmp_path / "one")
    second = save_figure(_figure(), tmp_path / "two.png")  # a suffix on the stem is dropped
    assert [path.suffix for path in first] == [".pdf", ".png"]
    assert [path.name for path in second] == ["two.pdf", "two.png"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert b"CreationDate" not in first[0].read_bytes()


def test_write_table_writes_full_precision_csv_and_rounded_latex(tmp_path):
    table = pd.DataFrame({"model": ["gpt2"], "iou": [0.78125], "missing": [float("nan")]})
    csv, tex = write_table(table, tmp_path / "tables" / "overlap", caption="Overlap.", float_digits=2)
    assert pd.read_csv(csv)["iou"].iloc[0] == 0.78125
    latex = tex.read_text()
    assert "0.78" in latex and "0.78125" not in latex and "--" in latex and "\\caption{Overlap.}" in latex
