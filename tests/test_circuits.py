import numpy as np
import pytest

from circuit_reuse.circuits import Circuit, HeadInfo, StageRecord, load_circuit, save_circuit, select_heads


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
    assert loaded.heads() == {(2, 1)}
    assert loaded.heads_with_role("mover") == [(2, 1)]
    assert loaded.stage("movers").heads == [(2, 1)]
    with pytest.raises(KeyError, match="no stage 'x'"):
        loaded.stage("x")
