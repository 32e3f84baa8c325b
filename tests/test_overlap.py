import math

import numpy as np
import pandas as pd
import pytest

from circuit_reuse.circuits import Circuit, HeadInfo, StageRecord
from circuit_reuse.overlap import (
    chance_overlap,
    head_overlap,
    random_circuit,
    role_aligned_table,
    threshold_sensitivity,
)


def _circuit(task, entries, n_layers=4, n_heads=4):
    infos = [HeadInfo(layer=l, head=h, stage=stage, score=score, role=role) for (l, h, stage, score, role) in entries]
    stage_names = dict.fromkeys(i.stage for i in infos)
    stages = [
        StageRecord(
            name=s,
            receivers="logits",
            position="END",
            below_layer=n_layers,
            heads=[(i.layer, i.head) for i in infos if i.stage == s],
        )
        for s in stage_names
    ]
    return Circuit("m", task, {"top_percent": 2.0}, stages, infos, n_layers, n_heads)


def test_overlap_arithmetic_on_a_hand_made_pair():
    result = head_overlap({(0, 0), (0, 1), (1, 0)}, {(0, 1), (1, 0), (2, 2), (3, 3)})
    assert (result.shared, result.union) == (2, 5)
    assert result.iou == pytest.approx(0.4)
    assert result.share_of_a_in_b == pytest.approx(2 / 3)
    assert result.share_of_b_in_a == pytest.approx(0.5)


def test_the_papers_25_of_32_is_an_intersection_over_union():
    shared = {(10 + i // 16, i % 16) for i in range(25)}
    a = shared | {(0, i) for i in range(4)}
    b = shared | {(1, i) for i in range(3)}
    result = head_overlap(a, b)
    assert (result.shared, result.union) == (25, 32)
    assert result.iou == pytest.approx(0.78125)


def test_empty_circuits_give_nan_not_a_crash():
    assert math.isnan(head_overlap(set(), set()).iou)


def test_role_aligned_table_marks_membership_roles_and_scores():
    ioi = _circuit("ioi", [(3, 1, "movers", 0.5, "mover"), (2, 0, "inhibition", 0.2, "inhibition")])
    co = _circuit("colored_objects", [(3, 1, "movers", 0.4, "mover"), (1, 2, "inhibition", -0.1, "content_gatherer")])
    table = role_aligned_table(ioi, co).set_index("name")
    assert table.loc["3.1", "membership"] == "shared"
    assert table.loc["2.0", "membership"] == "ioi only"
    assert table.loc["1.2", "membership"] == "colored_objects only"
    assert table.loc["1.2", "role_b"] == "content_gatherer" and pd.isna(table.loc["1.2", "role_a"])
    assert table.loc["3.1", "score_a"] == 0.5 and table.loc["3.1", "score_b"] == 0.4
    assert math.isnan(table.loc["2.0", "score_b"])


def test_threshold_sensitivity_reselects_every_stage():
    grid_a = np.zeros((2, 5))
    grid_b = np.zeros((2, 5))
    grid_a[0, :] = [5, 4, 3, 2, 1]
    grid_b[0, :] = [5, 4, 1, 2, 3]  # same top two, different third
    table = threshold_sensitivity({"s": grid_a}, {"s": grid_b}, [10, 20, 30]).set_index("top_percent")
    assert table.loc[10, "iou"] == 1.0  # one head each: (0, 0)
    assert table.loc[20, "iou"] == 1.0  # (0, 0), (0, 1)
    assert table.loc[30, "shared"] == 2 and table.loc[30, "union"] == 4


def test_random_circuits_respect_sizes_and_layer_limits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        heads = random_circuit([(3, 2), (2, 4)], n_heads=3, rng=rng)
        low = [h for h in heads if h[0] < 2]
        assert len(low) >= 3 and 3 <= len(heads) <= 5
        assert all(0 <= l < 4 and 0 <= h < 3 for l, h in heads)
    with pytest.raises(ValueError, match="cannot draw 7 heads"):
        random_circuit([(7, 2)], n_heads=3, rng=rng)


def test_chance_baseline_is_exact_when_one_circuit_is_every_head():
    result = chance_overlap([(16, 4)], [(5, 4)], n_heads=4, observed_iou=0.5, repeats=200)
    assert result["chance_iou_mean"] == pytest.approx(5 / 16)
    assert result["chance_iou_low"] == result["chance_iou_high"] == pytest.approx(5 / 16)
    assert result["p_value"] == pytest.approx(1 / 201)


def _exact_mean_iou(n, k):
    # Two independent uniform k-subsets of n heads: the shared count is hypergeometric.
    total = math.comb(n, k)
    return sum(math.comb(k, s) * math.comb(n - k, k - s) / total * s / (2 * k - s) for s in range(k + 1))


def test_chance_baseline_matches_the_hypergeometric_mean():
    repeats = 20_000
    result = chance_overlap([(8, 8)], [(8, 8)], n_heads=8, observed_iou=0.78, repeats=repeats, seed=3)
    exact = _exact_mean_iou(64, 8)
    # The Monte Carlo mean of a quantity bounded in [0, 1] is within 4 standard errors (sd <= 0.5).
    assert abs(result["chance_iou_mean"] - exact) < 4 * 0.5 / math.sqrt(repeats)
    assert result["p_value"] < 0.001


def test_chance_baseline_is_reproducible_for_a_seed():
    args = ([(3, 4)], [(3, 4)], 4, 0.3)
    assert chance_overlap(*args, repeats=500, seed=1) == chance_overlap(*args, repeats=500, seed=1)
    assert chance_overlap(*args, repeats=500, seed=1) != chance_overlap(*args, repeats=500, seed=2)


def test_importance_difference_on_a_hand_made_pair():
    from circuit_reuse.overlap import importance_difference, normalised_importance

    nan = float("nan")
    # Task a: stage 1 peaks at |-4| on head (1, 1); stage 2 (small scale, only layer 0 can reach) peaks at 0.02.
    grids_a = {
        "movers": np.array([[1.0, 0.0], [2.0, -4.0]]),
        "inhibition": np.array([[0.01, -0.02], [nan, nan]]),
        "empty": np.full((2, 2), nan),
    }
    # Task b: one stage, all zero but one head.
    grids_b = {"movers": np.array([[0.0, 0.0], [0.5, 0.0]])}
    np.testing.assert_allclose(normalised_importance(grids_a), [[0.5, 1.0], [0.5, 1.0]])
    np.testing.assert_allclose(normalised_importance(grids_b), [[0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(importance_difference(grids_a, grids_b), [[0.5, 1.0], [-0.5, 1.0]])
    # A task whose every stage is NaN or zero gives zero importance everywhere, not NaN.
    np.testing.assert_array_equal(normalised_importance({"s": np.zeros((2, 2)), "t": np.full((2, 2), nan)}), 0)
    with pytest.raises(ValueError):
        normalised_importance({"s": np.zeros((2, 2)), "t": np.zeros((3, 2))})


def test_every_pair_of_four_hand_made_circuits():
    from circuit_reuse.overlap import pairwise_heads, pairwise_overlap, pairwise_sensitivity

    heads = {
        "t1": [(0, 0), (0, 1), (1, 0), (1, 1)],
        "t2": [(0, 0), (0, 1), (2, 2)],
        "t3": [(3, 3)],
        "t4": [(0, 0), (1, 1), (3, 3), (2, 0)],
    }
    circuits = [_circuit(task, [(l, h, "movers", 1.0, "mover") for l, h in hs]) for task, hs in heads.items()]
    grids = {}
    for task, hs in heads.items():
        grid = np.zeros((4, 4))
        for rank, (l, h) in enumerate(hs):
            grid[l, h] = 10.0 - rank  # the circuit's heads lead; the rest score 0
        grids[task] = {"movers": grid}
    summary = pairwise_overlap(circuits, grids, repeats=200, seed=0).set_index(["task_a", "task_b"])
    assert list(summary.index) == [("t1", "t2"), ("t1", "t3"), ("t1", "t4"), ("t2", "t3"), ("t2", "t4"), ("t3", "t4")]
    expected = {  # (shared, union, share of a in b, share of b in a), counted by hand
        ("t1", "t2"): (2, 5, 2 / 4, 2 / 3),
        ("t1", "t3"): (0, 5, 0, 0),
        ("t1", "t4"): (2, 6, 2 / 4, 2 / 4),
        ("t2", "t3"): (0, 4, 0, 0),
        ("t2", "t4"): (1, 6, 1 / 3, 1 / 4),
        ("t3", "t4"): (1, 4, 1, 1 / 4),
    }
    for pair, (shared, union, a_in_b, b_in_a) in expected.items():
        row = summary.loc[pair]
        assert (row["shared"], row["union"]) == (shared, union), pair
        assert row["iou"] == pytest.approx(shared / union)
        assert (row["share_of_a_in_b"], row["share_of_b_in_a"]) == (pytest.approx(a_in_b), pytest.approx(b_in_a))
        assert row["chance_iou_low"] <= row["chance_iou_mean"] <= row["chance_iou_high"]
        assert 0 < row["p_value"] <= 1
    # Top 10 of 16 heads: a score of exactly 0 is never selected, so each side holds its circuit's heads alone.
    assert summary.loc[("t1", "t2"), "top10_logits_shared"] == 2
    assert (
        summary.loc[("t1", "t4"), "top10_logits_shared"] == 2 and summary.loc[("t3", "t4"), "top10_logits_shared"] == 1
    )
    aligned = pairwise_heads(circuits)
    assert len(aligned) == sum(int(u) for _, u, _, _ in expected.values())
    t3_t4 = aligned[(aligned["task_a"] == "t3") & (aligned["task_b"] == "t4")].set_index("name")["membership"]
    assert t3_t4.to_dict() == {"0.0": "t4 only", "1.1": "t4 only", "2.0": "t4 only", "3.3": "shared"}
    sweep = pairwise_sensitivity(circuits, grids, [6.25, 25], repeats=100)
    assert len(sweep) == 12 and set(zip(sweep["task_a"], sweep["task_b"], strict=True)) == set(expected)
    one_head = sweep[sweep["top_percent"] == 6.25].set_index(["task_a", "task_b"])["shared"]
    assert one_head.to_dict() == {pair: int(heads[pair[0]][0] == heads[pair[1]][0]) for pair in expected}
