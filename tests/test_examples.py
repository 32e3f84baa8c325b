"""Drift between the committed example tables and a run's results: hand-built cases with known answers."""

import pandas as pd
import pytest

from circuit_reuse.examples import copy_examples, copy_readme_figures, example_drift, example_files
from circuit_reuse.io import write_json, write_parquet


@pytest.fixture
def run(tmp_path):
    results = tmp_path / "run" / "results"
    grid = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "score": [0.5, -0.25, 0.125], "stage": "movers"})
    write_parquet(results / "patching/m/ioi/movers.parquet", grid, config={"when": "first run"})
    circuit = {"stages": [{"heads": [[0, 0]], "margin": 0.25}], "provenance": {"a": 1}}
    write_json(results / "circuits/m/ioi.json", circuit)
    write_parquet(results / "tables/baselines.parquet", pd.DataFrame({"model": ["m"], "accuracy": [0.5]}))
    write_parquet(results / "intervention/m/per_prompt.parquet", pd.DataFrame({"x": [1]}))  # not an example
    return results


def test_examples_are_the_files_the_notebooks_read(run, tmp_path):
    assert example_files(run) == ["circuits/m/ioi.json", "patching/m/ioi/movers.parquet", "tables/baselines.parquet"]
    write_json(tmp_path / "examples/circuits/m/gone.json", {})  # an example of a task the run no longer has
    (tmp_path / "examples/training").mkdir(parents=True)
    (tmp_path / "examples/training/organism.training_curve.csv").write_text("step\n1\n")  # another run's
    copy_examples(run, tmp_path / "examples")
    assert example_files(tmp_path / "examples") == example_files(run)
    assert not (tmp_path / "examples/circuits/m/gone.json").exists()
    assert (tmp_path / "examples/training/organism.training_curve.csv").read_text() == "step\n1\n"
    assert example_drift(tmp_path / "examples", run) == []


def test_numbers_within_the_tolerance_and_provenance_are_no_drift(run, tmp_path):
    copy_examples(run, tmp_path / "examples")
    grid = pd.read_parquet(run / "patching/m/ioi/movers.parquet")
    grid["score"] += 2e-5
    write_parquet(run / "patching/m/ioi/movers.parquet", grid, config={"when": "second run"})
    write_json(run / "circuits/m/ioi.json", {"stages": [{"heads": [[0, 0]], "margin": 0.25 + 2e-5}], "provenance": {}})
    assert example_drift(tmp_path / "examples", run) == []


def test_a_moved_score_a_changed_selection_and_a_missing_file_are_drift(run, tmp_path):
    copy_examples(run, tmp_path / "examples")
    grid = pd.read_parquet(run / "patching/m/ioi/movers.parquet")
    grid.loc[1, "score"] = -0.26
    write_parquet(run / "patching/m/ioi/movers.parquet", grid)
    write_json(run / "circuits/m/ioi.json", {"stages": [{"heads": [[1, 0]], "margin": 0.25}]})
    (run / "tables/baselines.parquet").unlink()
    assert example_drift(tmp_path / "examples", run) == [
        "tables/baselines.parquet: only in the committed examples",
        "circuits/m/ioi.json: stages[0].heads[0][0]: 0 vs 1",
        "patching/m/ioi/movers.parquet: column 'score' differs in 1 rows (row 1: -0.25 vs -0.26)",
    ]


def test_the_readme_figures_are_copied_flat(tmp_path):
    figures = tmp_path / "figures"
    names = ("baselines", "training_curves", "head_grids/m.ioi", "head_grids/m.colored_objects", "overlap/m")
    names += ("overlap/other",)
    for name in names:
        (figures / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)
        (figures / f"{name}.png").write_bytes(b"png")
    copied = copy_readme_figures(figures, tmp_path / "readme", "m", "ioi")
    assert copied == ["baselines.png", "training_curves.png", "head_grids.m.ioi.png", "overlap.m.png"]
    assert sorted(p.name for p in (tmp_path / "readme").iterdir()) == sorted(copied)


def test_measured_wall_times_are_examples_whose_values_are_not_compared(run, tmp_path):
    times = pd.DataFrame({"stage": ["movers"], "method": ["eap"], "wall_s": [1.5]})
    write_parquet(run / "attribution/m/times.parquet", times)
    copy_examples(run, tmp_path / "examples")
    assert (tmp_path / "examples/attribution/m/times.parquet").is_file()
    write_parquet(run / "attribution/m/times.parquet", times.assign(wall_s=2.5))
    assert example_drift(tmp_path / "examples", run) == []
    (run / "attribution/m/times.parquet").unlink()
    assert example_drift(tmp_path / "examples", run) == ["attribution/m/times.parquet: only in the committed examples"]
