"""The paper's numbers as data and this run's numbers beside them, on hand-made tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from circuit_reuse.paper import PAPER_NUMBERS, compare_to_paper, paper_model
from circuit_reuse.replicates import headline_rows

MEDIUM_RANDOM = {"source": "random", "architecture": "gpt2-medium", "seed": 1}
SMALL_HUB = {"source": "hub", "hub_id": "gpt2", "revision": "main"}
OTHER = {"source": "local", "path": "/models/pythia"}


def _overlap(model, iou, shared=1, pair=("ioi", "colored_objects")):
    return pd.DataFrame([{"model": model, "task_a": pair[0], "task_b": pair[1], "iou": iou, "shared": shared,
                          "share_of_a_in_b": 0.5, "share_of_b_in_a": 0.5, "p_value": 0.1}])  # fmt: skip


def _accuracy(model, rows):
    return pd.DataFrame(
        [{"model": model, "condition": c, "status": s, "accuracy": a, "delta_accuracy": 0.0, "fixed": 0,
          "introduced": 0} for c, s, a in rows]
    )  # fmt: skip


def _baselines(model, task, logit_diff, accuracy):
    return pd.DataFrame(
        [{"model": model, "task": task, "condition": cond, "accuracy": accuracy, "metric_mean": ld,
          "beats_distractor_rate": 0.5, "prob_target_mean": 0.25} for cond, ld in (("clean", logit_diff),
                                                                                 ("corrupted", -9.0))]
    )  # fmt: skip


def test_paper_numbers_hold_the_headline_values():
    table = PAPER_NUMBERS.set_index(["model", "metric"])["value"]
    assert table[("gpt2-medium", "ioi-colored_objects.iou")] == pytest.approx(0.78125)
    assert table[("gpt2-medium", "ioi-greater_than.iou")] == pytest.approx(3 / 18)
    assert table[("gpt2-medium", "ioi-world_capitals.iou")] == 0.25
    assert table[("gpt2-large", "ioi-colored_objects.top10_logits_shared")] == 5
    assert table[("gpt2-xl", "ioi-colored_objects.top10_logits_shared")] == 0
    assert table[("gpt2-medium", "both.accuracy")] == 93.7
    assert table[("gpt2-medium", "none.accuracy")] == 49.6
    assert table[("gpt2-small", "ioi.metric_mean")] == 3.56
    assert not PAPER_NUMBERS.duplicated(["model", "metric"]).any()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(MEDIUM_RANDOM, "gpt2-medium"), (SMALL_HUB, "gpt2-small"),
     ({"source": "hub", "hub_id": "gpt2-large"}, "gpt2-large"), ({"source": "hub", "hub_id": "distilgpt2"}, None),
     ({"source": "random", "architecture": "gpt2"}, "gpt2-small"), (OTHER, None)],
)  # fmt: skip
def test_models_match_the_paper_by_hub_id_or_architecture(spec, expected):
    assert paper_model(spec) == expected


def test_overlap_gap_in_the_papers_unit_per_pair():
    overlap = pd.concat([_overlap("m", 0.5), _overlap("m", 0.1, pair=("ioi", "greater_than"))])
    table = compare_to_paper(headline_rows(overlap=[overlap]), {"m": MEDIUM_RANDOM})
    row = table.set_index("metric").loc["ioi-colored_objects.iou"]
    assert (row["run"], row["paper"], row["gap"]) == (0.5, 0.78125, -0.28125)
    control = table.set_index("metric").loc["ioi-greater_than.iou"]
    assert (control["run"], control["gap"]) == (0.1, pytest.approx(0.1 - 3 / 18))
    assert "GPT-2 medium" in control["source"] and "unclear" in control["source"]
    assert row["paper_model"] == "gpt2-medium" and row["weights"] == "random"
    # metrics the run did not measure are kept, with no run value and no gap
    assert math.isnan(table.set_index("metric").loc["both.accuracy", "gap"])


def test_accuracies_are_compared_in_percent_and_skipped_conditions_have_no_value():
    accuracy = _accuracy("m", [("none", "ran", 0.5), ("both", "ran", 0.9), ("negative_mover", "skipped", np.nan)])
    table = compare_to_paper(headline_rows(intervention=[accuracy]), {"m": MEDIUM_RANDOM}).set_index("metric")
    assert table.loc["none.accuracy", "gap"] == pytest.approx(50.0 - 49.6)
    assert table.loc["both.accuracy", "gap"] == pytest.approx(90.0 - 93.7)
    assert table.loc["both.introduced", "gap"] == 0.0
    assert math.isnan(table.loc["negative_mover.accuracy", "run"])


def test_small_gets_the_ioi_baseline_and_an_unmatched_model_no_paper_value():
    baselines = pd.concat([_baselines("s", "ioi", 3.0, 0.8), _baselines("x", "ioi", 1.0, 0.2)])
    table = compare_to_paper(headline_rows(baselines), {"s": SMALL_HUB, "x": OTHER})
    small = table[table["model"] == "s"].set_index("metric")
    assert set(small.index) == {
        "ioi.metric_mean", "ioi.beats_distractor_rate", "ioi.prob_target_mean", "ioi.faithfulness"
    }  # fmt: skip
    assert np.isnan(small.loc["ioi.faithfulness", "run"])  # no faithfulness table given
    assert small.loc["ioi.metric_mean", "gap"] == pytest.approx(3.0 - 3.56)
    assert small.loc["ioi.beats_distractor_rate", "run"] == pytest.approx(50.0)
    other = table[table["model"] == "x"].set_index("metric")
    assert other["paper"].isna().all() and other["gap"].isna().all()
    assert other.loc["ioi.metric_mean", "run"] == 1.0
    assert set(other.index) == set(PAPER_NUMBERS["metric"])


def test_compare_to_paper_is_deterministic_and_ordered_by_family():
    headline = pd.DataFrame(
        [{"model": "m", "family": "overlap", "metric": "ioi-colored_objects.iou", "value": 0.25}],
        columns=["model", "family", "metric", "value"],
    )
    first = compare_to_paper(headline, {"m": MEDIUM_RANDOM})
    pd.testing.assert_frame_equal(first, compare_to_paper(headline, {"m": MEDIUM_RANDOM}))
    assert list(dict.fromkeys(first["family"])) == ["baseline", "overlap", "intervention", "movers"]


def test_random_head_control_and_mover_spearman_are_compared():
    controls = pd.DataFrame(
        [{"model": "m", "condition": "content_gatherers_blocked", "status": "ran", "random_mean": 0.5},
         {"model": "m", "condition": "both", "status": "skipped: no heads", "random_mean": np.nan}]
    )  # fmt: skip
    spearman = pd.DataFrame(
        [{"model": "m", "condition": "both", "metric": "d_dla", "rho": 0.6, "status": "ok"},
         {"model": "m", "condition": "both", "metric": "d_attn_wrong", "rho": -0.9, "status": "ok"}]
    )  # fmt: skip
    headline = headline_rows(controls=[controls], spearman=[spearman])
    table = compare_to_paper(headline, {"m": MEDIUM_RANDOM}).set_index("metric")
    control = table.loc["content_gatherers_blocked.random_accuracy"]
    assert (control["run"], control["paper"]) == (50.0, 49.9) and control["gap"] == pytest.approx(0.1)
    rho = table.loc["both.spearman_rho"]  # the logit-attribution change, not the attention one
    assert (rho["run"], rho["paper"]) == (0.6, 0.69) and rho["gap"] == pytest.approx(-0.09)


def test_own_circuit_faithfulness_under_mean_ablation_is_compared_with_wangs():
    rows = [  # (circuit_task, task, kind, ablation, f): only the first is the headline
        ("ioi", "ioi", "circuit", "mean", 0.8),
        ("ioi", "ioi", "circuit", "resample", 0.3),
        ("ioi", "ioi", "random", "mean", 0.1),
        ("colored_objects", "ioi", "circuit", "mean", 0.5),
    ]
    summary = pd.DataFrame(
        [{"model": "s", "circuit_task": c, "task": t, "kind": k, "ablation": a, "f": f} for c, t, k, a, f in rows]
    )
    headline = headline_rows(faithfulness=[summary])
    assert headline[["family", "metric", "value"]].values.tolist() == [["faithfulness", "ioi.faithfulness", 0.8]]
    row = compare_to_paper(headline, {"s": SMALL_HUB}).set_index("metric").loc["ioi.faithfulness"]
    assert (row["run"], row["paper"], row["unit"]) == (80.0, 87.0, "%") and row["gap"] == pytest.approx(-7.0)


def test_movers_attention_change_and_logit_attribution_ratio_are_compared():
    # Two movers under "both" (one of them edited itself, so left out) and the baseline's rows, which are no change.
    movers = pd.DataFrame(
        [{"model": "m", "condition": "none", "layer": 3, "head": 0, "intervened": False, "d_attn_answer": 0.0,
          "d_attn_wrong": 0.0, "dla": 1.0, "d_dla": 0.0},
         {"model": "m", "condition": "both", "layer": 3, "head": 0, "intervened": False, "d_attn_answer": 0.02,
          "d_attn_wrong": -0.10, "dla": 3.0, "d_dla": 2.0},
         {"model": "m", "condition": "both", "layer": 3, "head": 1, "intervened": False, "d_attn_answer": 0.04,
          "d_attn_wrong": -0.06, "dla": 1.0, "d_dla": 0.0},
         {"model": "m", "condition": "both", "layer": 2, "head": 0, "intervened": True, "d_attn_answer": 0.9,
          "d_attn_wrong": -0.9, "dla": 9.0, "d_dla": 9.0}]
    )  # fmt: skip
    headline = headline_rows(movers=[movers])
    assert set(headline["metric"]) == {"both.attn_answer_change", "both.attn_wrong_change", "both.dla_ratio"}
    table = compare_to_paper(headline, {"m": MEDIUM_RANDOM}).set_index("metric")
    answer, wrong, ratio = (table.loc[f"both.{m}"] for m in ("attn_answer_change", "attn_wrong_change", "dla_ratio"))
    assert answer["run"] == pytest.approx(3.0) and answer["paper"] == 2.7 and answer["unit"] == "pp"
    assert wrong["run"] == pytest.approx(-8.0) and wrong["paper"] == -8.7
    # (3 + 1) / (1 + 1): the movers' summed attribution after over before.
    assert ratio["run"] == pytest.approx(2.0) and ratio["paper"] == 3.0 and ratio["unit"] == "ratio"
