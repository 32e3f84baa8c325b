import json

import numpy as np
import pandas as pd
import pytest

from circuit_reuse.circuits import (
    SCORE_NOISE,
    Circuit,
    HeadInfo,
    StageRecord,
    grid_from_table,
    heads_label,
    load_circuit,
    save_circuit,
    select_heads,
    selection_margin,
)
from circuit_reuse.discovery import floor_dropped_heads


def test_top_two_percent_of_gpt2_medium_is_eight_heads():
    scores = np.arange(384, dtype=float).reshape(24, 16)
    selected = select_heads(scores, top_percent=2.0)
    assert len(selected) == 8
    assert selected[0] == (23, 15) and selected[-1] == (23, 8)


def test_selection_uses_magnitude_skips_nan_and_breaks_ties_by_position():
    scores = np.array([[0.1, -0.9, np.nan], [0.5, 0.5, -0.5]])
    assert select_heads(scores, top_percent=50) == [(0, 1), (1, 0), (1, 1)]
    assert select_heads(scores, threshold=0.5) == [(0, 1), (1, 0), (1, 1), (1, 2)]
    assert select_heads(np.full((2, 2), np.nan), top_percent=50) == []


def test_heads_with_no_effect_are_never_selected():
    """A score of exactly 0 (a sender with no path to the receivers) is no evidence for the head, even when fewer
    heads have an effect than the top p% asks for or the threshold is 0."""
    scores = np.array([[0.0, -0.2], [0.0, np.nan]])
    assert select_heads(scores, top_percent=75) == [(0, 1)]
    assert select_heads(scores, threshold=0) == [(0, 1)]
    assert select_heads(np.zeros((2, 2)), top_percent=50) == []


def test_at_least_one_head_is_selected():
    assert len(select_heads(np.ones((2, 2)), top_percent=1)) == 1


def test_the_score_floor_drops_chosen_heads_below_its_fraction_of_the_best():
    scores = np.array([[1.0, -0.5, 1e-6], [0.2, np.nan, 0.0]])
    assert select_heads(scores, top_percent=50) == [(0, 0), (0, 1), (1, 0)]
    assert select_heads(scores, top_percent=50, min_relative_score=0.3) == [(0, 0), (0, 1)]
    assert floor_dropped_heads(scores, {"top_percent": 50}, 0.3) == [(1, 0)]
    assert select_heads(scores, threshold=1e-7, min_relative_score=0.5) == [(0, 0), (0, 1)]  # -0.5: |score| counts
    assert floor_dropped_heads(scores, {"threshold": 1e-7}, 0.5) == [(1, 0), (0, 2)]
    assert select_heads(scores, top_percent=50, min_relative_score=1.0) == [(0, 0)]  # the best is always kept
    assert floor_dropped_heads(scores, {"top_percent": 50}, 0.0) == []
    with pytest.raises(ValueError, match=r"min_relative_score must be in \[0, 1\], got 2"):
        select_heads(scores, top_percent=50, min_relative_score=2)


def test_selection_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        select_heads(np.ones((2, 2)))
    with pytest.raises(ValueError, match="top_percent must be in"):
        select_heads(np.ones((2, 2)), top_percent=150)


def test_circuit_round_trips_through_json(tmp_path):
    circuit = Circuit(
        model="m",
        task="ioi",
        selection={"top_percent": 2.0},
        stages=[StageRecord("movers", "logits", "END", 3, [(2, 1)])],
        head_infos=[HeadInfo(2, 1, "movers", 0.7, "mover", {"copy_score": 0.9})],
        n_layers=3,
        n_heads=2,
    )
    loaded = load_circuit(save_circuit(tmp_path / "c.json", circuit))
    assert loaded == circuit
    circuit.stages[0] = StageRecord(
        "movers", "logits", "END", 3, [(2, 1)], min_relative_score=0.1, below_floor=[(0, 1)]
    )
    assert load_circuit(save_circuit(tmp_path / "floor.json", circuit)).stages[0].below_floor == [(0, 1)]
    assert loaded.heads() == {(2, 1)}
    assert loaded.heads_with_role("mover") == [(2, 1)]
    assert loaded.stage("movers").heads == [(2, 1)]
    with pytest.raises(KeyError, match="no stage 'x'"):
        loaded.stage("x")


def test_the_selection_margin_is_the_gap_at_the_cut():
    scores = np.array([[0.9, -0.5, np.nan], [0.3, -0.29, 0.0]])  # |score| ranked 0.9, 0.5, 0.3, 0.29, 0
    # top 40% of 6 heads = 2 heads (0.9 and 0.5); the strongest unselected has 0.3
    assert selection_margin(scores, top_percent=40) == pytest.approx(0.2)
    assert selection_margin(scores, top_percent=50) == pytest.approx(0.01)  # 3 heads: 0.3 against 0.29
    assert selection_margin(scores, top_percent=100) is None  # every scorable head selected
    # a threshold: the |score| nearest to it on either side
    assert selection_margin(scores, threshold=0.31) == pytest.approx(0.01)
    assert selection_margin(scores, threshold=0.7) == pytest.approx(0.2)
    assert selection_margin(np.full((2, 2), np.nan), threshold=0.1) is None


def test_a_margin_below_the_noise_is_flagged_and_kept_in_the_circuit_file(tmp_path):
    tied = np.array([[0.5, 0.5 - SCORE_NOISE / 10], [0.1, 0.0]])
    stage = StageRecord("movers", "logits", "END", 2, select_heads(tied, top_percent=25), selection_margin(tied, 25))
    assert stage.heads == [(0, 0)] and stage.near_tie
    clear = StageRecord("movers", "logits", "END", 2, [(0, 0)], margin=0.4)
    assert not clear.near_tie
    circuit = Circuit("m", "ioi", {"top_percent": 25}, [stage], [], n_layers=2, n_heads=2)
    saved = json.loads(save_circuit(tmp_path / "c.json", circuit).read_text())
    assert saved["stages"][0]["near_tie"] is True and saved["stages"][0]["margin"] == pytest.approx(SCORE_NOISE / 10)
    assert load_circuit(tmp_path / "c.json").stages[0].near_tie


def test_a_per_head_table_becomes_a_layer_by_head_grid():
    table = pd.DataFrame({"layer": [0, 1], "head": [1, 0], "x": [0.5, 0.25], "score": [1.0, 2.0]})
    grid = grid_from_table(table, "x")
    assert grid.shape == (2, 2) and grid[0, 1] == 0.5 and grid[1, 0] == 0.25
    assert np.isnan(grid[0, 0]) and np.isnan(grid[1, 1])
    wide = grid_from_table(table, shape=(3, 4))  # the model's shape, even where the table is short
    assert wide.shape == (3, 4) and wide[1, 0] == 2.0 and np.isnan(wide[2]).all()


def test_heads_label_sorts_and_joins():
    assert heads_label([(13, 4), (12, 3), (19, 1)]) == "12.3,13.4,19.1"
    assert heads_label([]) == ""
