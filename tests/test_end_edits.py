"""The END-only engine against the hooked forward pass, the reference: the same logits, attention rows and head
outputs at END for every kind of edit, and the same intervention tables whichever engine runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_intervention import colored_objects_records

from circuit_reuse.datasets import from_records
from circuit_reuse.edits import (
    BASELINE,
    Block,
    Condition,
    EditError,
    Override,
    block_rows,
    merge_hooks,
    override_rows,
    row_edit_hooks,
)
from circuit_reuse.end_edits import EndEdit, final_logits, final_scale, run_end_edits
from circuit_reuse.evaluation import choose_engine, run_conditions_with_readouts
from circuit_reuse.intervention import HeadSet, InterventionSettings, intervention_experiment, random_head_controls
from circuit_reuse.weights import ModelWeights

TOLERANCE = 1e-5
LENGTHS = [9, 14, 6, 14, 11]  # right-padded to 14


def random_prompts(seed: int):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(LENGTHS), max(LENGTHS)), 50256, dtype=torch.long)
    for i, length in enumerate(LENGTHS):
        tokens[i, :length] = torch.randint(0, 50000, (length,), generator=generator)
    return tokens, torch.tensor(LENGTHS) - 1, generator


def edit_sets(n_layers: int, n_heads: int, end: torch.Tensor, generator: torch.Generator) -> list[list[EndEdit]]:
    """Every kind of edit: none, an override, a block, an all-zero block, several layers, two edits of one head."""

    def keys(k: int) -> torch.Tensor:
        return torch.stack([torch.randint(0, int(e) + 1, (k,), generator=generator) for e in end])

    top, mid = n_layers - 1, n_layers // 2
    span = torch.stack([end // 3, end // 3 + 3], dim=1)
    everything = torch.stack([torch.zeros_like(end), end + 1], dim=1)
    heads = tuple(range(0, n_heads, 2))
    return [
        [],
        [EndEdit(mid, heads, override_rows(end, keys(2), (0.3, 0.7)))],
        [EndEdit(top, (n_heads - 1,), block_rows(end, span))],
        [EndEdit(mid, (0,), block_rows(end, everything))],  # the whole row blocked: the head writes nothing
        [EndEdit(0, (1,), override_rows(end, keys(3))), EndEdit(top, heads, block_rows(end, span))],
        [EndEdit(mid, (1,), override_rows(end, keys(2))), EndEdit(mid, (1, 0), block_rows(end, keys(1).repeat(1, 2)))],
    ]


def hooked(model, tokens, end, edits: list[EndEdit], readout: dict[int, tuple[int, ...]]):
    """The reference: a hooked forward pass with the same row edits at END; logits, patterns, z and scale there."""
    rows = torch.arange(len(end))
    seen = {}

    def keep(key, heads):
        def hook(activation, hook=None):
            if key[0] == "pattern":
                seen[key] = activation[rows[:, None], torch.tensor(heads)[None, :], end[:, None]]
            else:
                seen[key] = activation[rows, end][:, list(heads)]
            return activation

        return hook

    hooks = merge_hooks(hook for e in edits for hook in row_edit_hooks([(e.layer, h) for h in e.heads], end, e.edit))
    for layer, heads in readout.items():
        hooks += [
            (f"blocks.{layer}.attn.hook_pattern", keep(("pattern", layer), heads)),
            (f"blocks.{layer}.attn.hook_z", keep(("z", layer), heads)),
        ]

    def keep_scale(scale, hook=None):
        seen["scale"] = scale[rows, end, 0]
        return scale

    logits = model.run_with_hooks(tokens, fwd_hooks=hooks + [("ln_final.hook_scale", keep_scale)])
    return logits[rows, end], seen


@pytest.mark.parametrize(("n_layer", "n_head", "n_embd"), [(3, 4, 64), (4, 2, 32), (2, 8, 64)])
def test_end_engine_matches_the_hooked_forward_pass(make_model, n_layer, n_head, n_embd):
    model = make_model(n_layer=n_layer, n_head=n_head, n_embd=n_embd, seed=n_layer)
    tokens, end, generator = random_prompts(n_layer)
    sets = edit_sets(n_layer, n_head, end, generator)
    mid = n_layer // 2
    readout = {n_layer - 1: (0, n_head - 1)}
    readout[mid] = tuple(sorted({*readout.get(mid, ()), 0, 1}))  # head 0: the all-zero row
    weights = ModelWeights(model)
    with torch.no_grad():
        fast = run_end_edits(weights, tokens, end, sets, readout)
        for row, edits in enumerate(sets):
            logits, seen = hooked(model, tokens, end, edits, readout)
            assert (logits - logits.mean()).abs().max() > 100 * TOLERANCE, "a vacuous comparison"
            torch.testing.assert_close(final_logits(weights, fast.final[row]), logits, rtol=0, atol=TOLERANCE)
            torch.testing.assert_close(final_scale(weights, fast.final[row]), seen["scale"], rtol=TOLERANCE, atol=0)
            for layer in readout:
                torch.testing.assert_close(fast.patterns[layer][row], seen["pattern", layer], rtol=0, atol=TOLERANCE)
                torch.testing.assert_close(fast.z[layer][row], seen["z", layer], rtol=0, atol=TOLERANCE)
    # The edits did something, and the all-zero row stayed all zero.
    differs = [not torch.allclose(fast.final[0], fast.final[row]) for row in range(1, len(sets))]
    assert all(differs)
    assert (fast.patterns[mid][3][:, 0] == 0).all()


# --------------------------------------------------------------------------------------------------
# The intervention on hand-made Colored Objects prompts of different lengths, either engine


@pytest.fixture(scope="module")
def co_dataset(tokenizer_dir):
    from transformers import AutoTokenizer

    dataset = from_records("colored_objects", colored_objects_records(AutoTokenizer.from_pretrained(tokenizer_dir), 8))
    assert len(set(dataset.end.tolist())) > 1, "prompts of different lengths: the padding is exercised"
    return dataset


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(n_layer=4, n_head=4, n_embd=64, seed=5)


TARGETS = ("wrong_color_0", "wrong_color_1")


# What a row's ranking of the vocabulary decides. On a random model logits lie about 1e-5 apart, so two
# can tie to float precision, and then the two engines' rounding may order them either way.
RANK_COLUMNS = ("top_token", "top_str", "target_rank", "correct")


def assert_same_tables(fast: pd.DataFrame, hooks: pd.DataFrame, end_logits=None) -> None:
    """The engines' tables agree: floats to TOLERANCE, everything else exactly, except the ranking columns of
    a row whose differing top token, or target rank, is explained by logits tied to TOLERANCE at END in the
    hooked pass (`end_logits(row)` gives a row's END logits; without it no row may differ)."""
    assert list(fast.columns) == list(hooks.columns) and len(fast) == len(hooks) > 0
    tied = np.zeros(len(fast), dtype=bool)
    if "top_token" in fast:
        differs = (fast["top_token"].to_numpy() != hooks["top_token"].to_numpy()) | (
            fast["target_rank"].to_numpy() != hooks["target_rank"].to_numpy()
        )
        for i in np.flatnonzero(differs):
            assert end_logits is not None, f"row {i}: the engines rank the vocabulary differently"
            logits = end_logits(hooks.iloc[i])
            top_gap = abs(float(logits[fast["top_token"].iloc[i]] - logits[hooks["top_token"].iloc[i]]))
            assert top_gap < TOLERANCE, f"row {i}: the engines' top tokens differ by {top_gap:.2g} in logit"
            near_target = int((torch.abs(logits - float(hooks["logit_target"].iloc[i])) < TOLERANCE).sum()) - 1
            shift = abs(int(fast["target_rank"].iloc[i]) - int(hooks["target_rank"].iloc[i]))
            assert shift <= near_target, f"row {i}: target rank moved {shift}, {near_target} logits tie with it"
            tied[i] = True
    for column in fast.columns:
        if pd.api.types.is_float_dtype(hooks[column]):
            np.testing.assert_allclose(fast[column], hooks[column], rtol=TOLERANCE, atol=TOLERANCE, err_msg=column)
        elif column in RANK_COLUMNS:
            pd.testing.assert_series_equal(fast[column][~tied], hooks[column][~tied])
        else:
            pd.testing.assert_series_equal(fast[column], hooks[column])


def hooked_end_logits(model, dataset, conditions):
    """A row's END logits in the hooked pass of its condition (the reference engine)."""
    by_name = {condition.name: condition for condition in conditions}

    def end_logits(row):
        hooks = by_name[row["condition"]].hooks(dataset)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(dataset.clean_tokens)
        return logits[int(row["prompt"]), dataset.end[int(row["prompt"])]]

    return end_logits


def test_every_condition_kind_gives_the_same_rows_whichever_engine(model, co_dataset):
    conditions = [
        Condition(BASELINE),
        Condition("override", (Override(((2, 1), (2, 3)), TARGETS),)),
        Condition("weighted", (Override(((1, 0),), TARGETS, (0.9, 0.1)),)),
        Condition("layers", (Override(((1, 2),), TARGETS), Override(((3, 0), (3, 1)), TARGETS))),
        Condition("block", (Block(((0, 1), (1, 3))),)),
        Condition("override_then_block", (Override(((2, 2),), TARGETS), Block(((2, 2), (2, 0))))),
    ]
    roles = ("answer_color", *TARGETS)
    readout = [(2, 0), (3, 2), (3, 3)]
    run = lambda engine: run_conditions_with_readouts(  # noqa: E731
        model, co_dataset, conditions, readout, roles, batch_size=3, progress=False, engine=engine
    )
    (fast_prompts, fast_heads), (hooked_prompts, hooked_heads) = run("fast"), run("hooks")
    assert_same_tables(fast_prompts, hooked_prompts, hooked_end_logits(model, co_dataset, conditions))
    assert_same_tables(fast_heads, hooked_heads)
    # Not vacuous: every edit moves the metric, on some prompt, far beyond the tolerance.
    metric = fast_prompts.pivot(index="prompt", columns="condition", values="metric")
    moved = metric.drop(columns=BASELINE).sub(metric[BASELINE], axis=0).abs().max()
    assert (moved > 100 * TOLERANCE).all(), moved


def test_random_controls_agree_whichever_engine(model, co_dataset):
    condition = Condition("inh", (Override(((1, 0), (2, 1)), TARGETS),))
    run = lambda engine: random_head_controls(  # noqa: E731
        model, co_dataset, condition, 3, 11, [(1, 2)], batch_size=4, progress=False, engine=engine
    )
    assert_same_tables(run("fast"), run("hooks"))


def test_the_experiments_tables_are_the_same_whichever_engine(model, co_dataset):
    sets = {
        "inhibition": HeadSet("inhibition", [(1, 0), (2, 3)], "config"),
        "negative_mover": HeadSet("negative_mover", [(3, 1)], "config"),
        "content_gatherers": HeadSet("content_gatherers", [(0, 2), (1, 1)], "config"),
        "movers": HeadSet("movers", [(2, 0), (3, 2)], "config"),
    }
    settings = InterventionSettings(repeats=2, n_boot=200, batch_size=3)
    importance = {(2, 0): 0.5, (3, 2): -0.1}
    fast = intervention_experiment(model, co_dataset, sets, settings, importance, progress=False, engine="fast")
    hooks = intervention_experiment(model, co_dataset, sets, settings, importance, progress=False, engine="hooks")
    assert list(fast) == list(hooks)
    for name in fast:
        assert_same_tables(fast[name].reset_index(drop=True), hooks[name].reset_index(drop=True))
    assert len(fast["controls"]) == 4 * settings.repeats
    assert set(fast["movers"]["condition"]) == set(fast["accuracy"]["condition"])  # no control is read out


def test_auto_takes_hooks_for_edits_away_from_end_and_fast_refuses_them(model, co_dataset):
    at_end = [Condition("end", (Override(((1, 0),), TARGETS),))]
    elsewhere = [Condition("object", (Override(((1, 0),), ("color_0",), query_role="question_object"),))]
    assert choose_engine(model, co_dataset, at_end) == "fast"
    assert choose_engine(model, co_dataset, elsewhere) == "hooks"
    assert choose_engine(model, co_dataset, at_end, "hooks") == "hooks"
    with pytest.raises(EditError, match="question_object, not only at END"):
        choose_engine(model, co_dataset, elsewhere, "fast")
    with pytest.raises(EditError, match="engine must be one of"):
        choose_engine(model, co_dataset, at_end, "quick")
