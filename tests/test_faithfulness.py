"""Head-output ablation and circuit faithfulness against hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_reuse.ablation import (
    AblationError,
    head_outputs,
    position_keys,
    reference_outputs,
    replacement_outputs,
)
from circuit_reuse.datasets import make_dataset
from circuit_reuse.edits import EditError, ablation_hooks
from circuit_reuse.evaluation import end_logits
from circuit_reuse.faithfulness import (
    FaithfulnessError,
    FaithfulnessSettings,
    curve_areas,
    faithfulness_experiment,
    faithfulness_per_prompt,
    random_circuits,
    summarize,
    top_k_circuits,
)
from circuit_reuse.hook_names import head_output
from circuit_reuse.models import ModelSpec, cache_model, load_model


@pytest.fixture(scope="module")
def ioi(tokenizer_dir):
    return make_dataset("ioi", 10, seed=3, tokenizer=tokenizer_dir)


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(n_layer=2, n_head=4, n_embd=64, seed=5)


@pytest.fixture(scope="module")
def one_head_model(tmp_path_factory, tokenizer_dir):
    """A 2-layer model in which head 1.2 alone writes to the residual stream: every other W_O is zero."""
    # Weights 10x GPT-2's initialisation, so that the head moves the metric far more than float noise.
    spec = ModelSpec(
        name="one-head",
        source="random",
        overrides={"n_layer": 2, "n_head": 4, "n_embd": 64, "initializer_range": 0.2},
        seed=7,
    )
    dest = tmp_path_factory.mktemp("models") / "one-head"
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    bridge = load_model(dest, device="cpu")
    d_head = bridge.cfg.d_head
    with torch.no_grad():
        for name, parameter in bridge.named_parameters():
            if name.endswith("attn.o._original_component.weight"):
                layer = int(name.split(".")[2])
                for head in range(bridge.cfg.n_heads):
                    rows = slice(head * d_head, (head + 1) * d_head)
                    if (layer, head) != (1, 2):
                        parameter[rows] = 0
    assert torch.count_nonzero(bridge.W_O.detach().flatten(2).abs().sum(-1)) == 1  # the edit took
    return bridge


def test_one_head_circuit_has_faithfulness_one_and_the_rest_zero(one_head_model, ioi):
    others = [(l, h) for l in range(2) for h in range(4) if (l, h) != (1, 2)]
    for ablation in ("mean", "resample", "zero"):
        table = faithfulness_per_prompt(
            one_head_model, ioi, {"the head": [(1, 2)], "the rest": others}, ablation, "abc", progress=False
        )
        summary = summarize(table).set_index("circuit")
        assert abs(summary.loc["the head", "metric_model"] - summary.loc["the head", "metric_empty"]) > 0.01
        assert summary.loc["the head", "f"] == pytest.approx(1.0, abs=1e-3)
        assert summary.loc["the rest", "f"] == pytest.approx(0.0, abs=1e-3)
        moved = table[(table["metric_model"] - table["metric_empty"]).abs() > 0.1]
        assert len(moved) >= 4  # per prompt too, wherever the head moves the metric well above float noise
        np.testing.assert_allclose(moved.loc[moved["circuit"] == "the head", "f"], 1.0, atol=1e-4)
        np.testing.assert_allclose(moved.loc[moved["circuit"] == "the rest", "f"], 0.0, atol=1e-4)


def test_keeping_every_head_leaves_the_metric_unchanged(model, ioi):
    every = [(l, h) for l in range(2) for h in range(4)]
    table = faithfulness_per_prompt(model, ioi, {"all": every}, "mean", "abc", progress=False)
    width = int(ioi.end.max()) + 1
    logits = model(ioi.clean_tokens[:, :width])[torch.arange(len(ioi)), ioi.end].double()
    plain = ioi.metric(logits, ioi.metric_tokens, ioi.metric_weights).numpy()
    np.testing.assert_allclose(table["metric_circuit"], plain, atol=1e-5)
    np.testing.assert_allclose(table["metric_model"], plain, atol=1e-5)


def test_ablating_with_the_prompts_own_clean_values_changes_nothing(model, ioi):
    for i in range(3):  # one prompt each: the reference mean and the resample donor are the prompt itself
        single = ioi.subset([i])
        single.corruptions["self"] = single.clean_tokens.clone()
        for ablation in ("mean", "resample"):
            table = faithfulness_per_prompt(model, single, {"one": [(0, 1)]}, ablation, "self", progress=False)
            assert table["metric_empty"].iloc[0] == pytest.approx(table["metric_model"].iloc[0], abs=1e-5)
            assert table["metric_circuit"].iloc[0] == pytest.approx(table["metric_model"].iloc[0], abs=1e-5)


def test_mean_ablation_equals_a_hand_computation(model, ioi):
    keep = [(0, 3), (1, 0)]
    prepared = reference_outputs(model, ioi, "mean", "abc", batch_size=4)
    replacement = replacement_outputs(model, prepared, torch.arange(len(ioi)), ioi.end)
    hooks = ablation_hooks(keep, replacement, model.cfg.n_layers, model.cfg.n_heads)
    got = end_logits(model, ioi.clean_tokens, ioi.end, hooks).cpu()
    # By hand: every head's output on every ABC prompt, grouped by token key in plain Python loops.
    keys = position_keys(ioi)
    outputs = head_outputs(model, ioi.corruptions["abc"], ioi.end).double()
    groups: dict[str, list[torch.Tensor]] = {}
    for i, row in enumerate(keys):
        for pos, key in enumerate(row):
            groups.setdefault(key, []).append(outputs[i, pos])
    means = {key: torch.stack(values).mean(0) for key, values in groups.items()}
    width = int(ioi.end.max()) + 1

    def replace(layer):
        def hook(z, hook=None):
            z = z.clone()
            for i, row in enumerate(keys):
                for pos, key in enumerate(row):
                    for head in range(4):
                        if (layer, head) not in keep:
                            z[i, pos, head] = means[key][layer, head].float()
            return z

        return hook

    logits = model.run_with_hooks(
        ioi.clean_tokens[:, :width], fwd_hooks=[(head_output(l), replace(l)) for l in range(2)]
    )
    expected = logits[torch.arange(len(ioi)), ioi.end].double()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - model(ioi.clean_tokens[:, :width])[torch.arange(len(ioi)), ioi.end]).abs().max() > 1e-3


def test_position_keys_follow_roles():
    class Toy:
        positions = {"A": torch.tensor([1, 2]), "END": torch.tensor([4, 3])}
        end = torch.tensor([4, 3])

        def __len__(self):
            return 2

    assert position_keys(Toy()) == [["^+1", "A", "A+1", "A+2", "END"], ["^+1", "^+2", "A", "END"]]


def test_resample_is_seeded_and_reproducible(model, ioi):
    def run(seed):
        table = faithfulness_per_prompt(
            model, ioi, {"c": [(0, 0), (1, 1)]}, "resample", "abc", seed=seed, progress=False
        )
        return table["metric_circuit"].to_numpy()

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))


def test_batch_size_changes_no_number(model, ioi):
    circuits = {"c": [(0, 2), (1, 3)], "d": [(1, 1)]}
    for ablation in ("mean", "resample", "zero"):
        a = faithfulness_per_prompt(model, ioi, circuits, ablation, "abc", batch_size=3, progress=False)
        b = faithfulness_per_prompt(model, ioi, circuits, ablation, "abc", batch_size=10, progress=False)
        a, b = (t.sort_values(["circuit", "prompt"]).reset_index(drop=True) for t in (a, b))
        # f is a ratio of small differences and amplifies float32 noise; the metrics it comes from are compared.
        metrics = ["metric_circuit", "metric_model", "metric_empty"]
        pd.testing.assert_frame_equal(a.drop(columns=metrics + ["f"]), b.drop(columns=metrics + ["f"]))
        np.testing.assert_allclose(a[metrics], b[metrics], atol=1e-5, rtol=0)


def test_named_errors(model, ioi):
    with pytest.raises(FaithfulnessError, match="circuit 'none' is empty"):
        faithfulness_per_prompt(model, ioi, {"none": []}, "mean", "abc", progress=False)
    with pytest.raises(EditError, match=r"head 2\.0 is outside the model \(2 layers x 4 heads\)"):
        faithfulness_per_prompt(model, ioi, {"c": [(2, 0)]}, "mean", "abc", progress=False)
    with pytest.raises(AblationError, match="no corruption 'other_object'.*flip"):
        faithfulness_per_prompt(model, ioi, {"c": [(0, 0)]}, "mean", "other_object", progress=False)
    with pytest.raises(AblationError, match="need a reference distribution"):
        faithfulness_per_prompt(model, ioi, {"c": [(0, 0)]}, "resample", None, progress=False)
    with pytest.raises(AblationError, match="unknown ablation 'median'"):
        faithfulness_per_prompt(model, ioi, {"c": [(0, 0)]}, "median", "abc", progress=False)
    # zero ablation needs no reference distribution
    assert len(faithfulness_per_prompt(model, ioi, {"c": [(0, 0)]}, "zero", None, progress=False)) == len(ioi)


def test_random_circuits_match_size_and_layer_profile():
    heads = [(0, 1), (2, 3), (2, 0), (5, 7)]
    circuits = random_circuits(heads, n_heads=8, repeats=20, seed=4)
    for circuit in circuits:
        assert len(set(circuit)) == 4
        assert sorted(l for l, _ in circuit) == [0, 2, 2, 5]
    assert circuits == random_circuits(heads, n_heads=8, repeats=20, seed=4)
    assert circuits[:5] == random_circuits(heads, n_heads=8, repeats=5, seed=4)
    assert len({tuple(c) for c in circuits}) > 1
    with pytest.raises(FaithfulnessError, match="empty"):
        random_circuits([], n_heads=8, repeats=2, seed=0)


def test_top_k_circuits():
    importance = np.array([[0.3, 0.0], [0.5, 0.2]])
    circuits = top_k_circuits(importance, [25, 50, 100])
    assert circuits == {25: [(1, 0)], 50: [(1, 0), (0, 0)], 100: [(1, 0), (0, 0), (1, 1), (0, 1)]}
    with pytest.raises(FaithfulnessError, match=r"\(0, 100\]"):
        top_k_circuits(importance, [0])


def test_curve_areas_of_known_curves():
    assert curve_areas([0, 50, 100], [1, 1, 1]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert curve_areas([100, 0], [1, 0]) == (pytest.approx(0.5), pytest.approx(0.5))
    cpr, cmd = curve_areas([0, 50, 100], [0, 2, 1])
    assert cpr == pytest.approx(1.25) and cmd == pytest.approx(0.75)


def test_experiment_tables_describe_every_circuit(model, ioi):
    settings = FaithfulnessSettings(
        ablations=("mean", "zero"), n_prompts=6, random_repeats=2, curve_percents=(25, 50, 100), seed=1, batch_size=4
    )
    circuits = {"ioi": [(0, 1), (1, 2)], "other": [(1, 3)], "empty": []}
    importance = np.arange(8, dtype=float).reshape(2, 4)
    tables = faithfulness_experiment(model, ioi, circuits, importance, settings, "abc", progress=False)
    summary = tables["summary"]
    names = {"ioi", "other", "ioi/random0", "ioi/random1", "other/random0", "other/random1", "top 25%", "top 50%"}
    assert set(summary["circuit"]) == names | {"top 100%"}
    assert len(summary) == 2 * len(set(summary["circuit"]))
    assert (summary["task"] == "ioi").all() and (summary["n"] == 6).all()
    assert len(tables["prompts"]) == 6 * len(summary)
    random = summary[summary["kind"] == "random"]
    assert set(random["circuit_task"]) == {"ioi", "other"} and set(random["repeat"]) == {0, 1}
    assert (random.groupby("circuit_task")["n_heads"].first() == pd.Series({"ioi": 2, "other": 1})).all()
    curve = tables["curve"]
    assert curve["percent"].tolist() == [25, 50, 100] * 2
    assert curve["n_heads"].tolist() == [2, 4, 8] * 2
    # every head kept: f = 1 exactly where m(M) != m(empty)
    np.testing.assert_allclose(curve.loc[curve["percent"] == 100, "f"], 1.0, atol=1e-5)
    for _, group in curve.groupby("ablation"):
        cpr, cmd = curve_areas(group["percent"], group["f"])
        assert (group["cpr"] == cpr).all() and (group["cmd"] == cmd).all()
    top = summary.set_index(["circuit", "ablation"])
    assert top.loc[("top 25%", "mean"), "n_heads"] == 2  # heads 1.3 and 1.2, the largest importance


def _prompt_table(circuit, model, empty, name="c"):
    n = len(circuit)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (np.asarray(circuit) - empty) / (np.asarray(model) - empty)
    return pd.DataFrame(
        {
            "circuit": name, "n_heads": 1, "ablation": "mean", "prompt": np.arange(n), "metric_circuit": circuit,
            "metric_model": model, "metric_empty": empty, "f": f,
        }
    )  # fmt: skip


def test_f_interval_is_a_point_where_every_resample_gives_the_same_f():
    model = np.array([2.0, 3.0, 5.0, 1.5, 4.0])
    empty = np.array([0.5, -1.0, 1.0, 0.0, 2.0])
    whole = summarize(_prompt_table(model, model, empty), n_resamples=500).iloc[0]
    nothing = summarize(_prompt_table(empty, model, empty), n_resamples=500).iloc[0]
    assert (whole["f"], whole["f_low"], whole["f_high"]) == (pytest.approx(1), pytest.approx(1), pytest.approx(1))
    assert (nothing["f"], nothing["f_low"], nothing["f_high"]) == (0, 0, 0)
    half = summarize(_prompt_table(empty + (model - empty) / 2, model, empty), n_resamples=500).iloc[0]
    assert half["f_low"] == pytest.approx(0.5) and half["f_high"] == pytest.approx(0.5)


def test_f_interval_holds_f_narrows_with_more_prompts_and_is_seeded():
    rng = np.random.default_rng(0)
    model, empty = rng.normal(3, 1, 40), rng.normal(0, 1, 40)
    circuit = empty + (model - empty) * rng.uniform(0, 1, 40)
    few = summarize(_prompt_table(circuit, model, empty), n_resamples=1000, seed=3).iloc[0]
    assert few["f_low"] < few["f"] < few["f_high"]
    many = summarize(_prompt_table(*(np.tile(x, 16) for x in (circuit, model, empty))), n_resamples=1000).iloc[0]
    assert many["f"] == pytest.approx(few["f"])
    assert many["f_high"] - many["f_low"] < (few["f_high"] - few["f_low"]) / 2  # about 1/sqrt(16) as wide
    again = summarize(_prompt_table(circuit, model, empty), n_resamples=1000, seed=3).iloc[0]
    assert (again["f_low"], again["f_high"]) == (few["f_low"], few["f_high"])
    level = summarize(_prompt_table(circuit, model, empty), n_resamples=1000, level=0.5, seed=3).iloc[0]
    assert few["f_low"] < level["f_low"] < level["f_high"] < few["f_high"]
