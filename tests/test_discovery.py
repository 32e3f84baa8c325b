from dataclasses import replace

import numpy as np
import pytest
import torch

from circuit_reuse.circuits import grid_from_table
from circuit_reuse.datasets import from_records
from circuit_reuse.discovery import (
    StageError,
    StageSpec,
    assemble_circuit,
    below_layer,
    describe_receivers,
    parse_stages,
    scores_table,
    selected_heads,
    stage_receivers,
    stage_senders,
)
from circuit_reuse.head_roles import detector_scores
from circuit_reuse.models import load_tokenizer

IOI_STAGES = [
    {"name": "movers", "receivers": "logits", "position": "END"},
    {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": "END"},
    {"name": "induction", "receivers": {"stage": "inhibition", "components": ["k", "v"]}, "position": "S2"},
]


def test_stages_parse_with_their_kinds():
    specs = parse_stages("ioi", IOI_STAGES)
    assert [s.kind for s in specs] == ["logits", "query", "key_value"]
    assert specs[2] == StageSpec("induction", "inhibition", ("k", "v"), "S2", "authors")


def test_each_stage_takes_the_default_sender_set_or_its_own():
    entries = [*IOI_STAGES[:2], {**IOI_STAGES[2], "senders": "below_lowest"}]
    specs = parse_stages("ioi", entries, senders="any_path")
    assert [s.senders for s in specs] == [None, "any_path", "below_lowest"]  # to the logits every head sends
    # q of 1.1 and 3.2 in a 4-layer, 2-head model: the heads each set scores and the layer they lie below.
    receivers = [(1, 1, "q"), (3, 0, "q")]
    for senders, heads, limit in [
        ("authors", ((0, 0), (0, 1), (1, 0)), 2),
        ("any_path", ((0, 0), (0, 1), (1, 0), (2, 0), (2, 1)), 3),
        ("below_lowest", ((0, 0), (0, 1)), 1),
    ]:
        spec = StageSpec("inhibition", "movers", ("q",), "END", senders)
        assert stage_senders(spec, receivers, 4, 2) == heads
        assert below_layer(spec, receivers, 4, 2) == limit
    assert stage_senders(specs[1], [], 4, 2) == ()
    assert below_layer(specs[0], "logits", 4, 2) == 4


def test_each_stage_takes_the_default_score_floor_or_its_own():
    entries = [*IOI_STAGES[:2], {**IOI_STAGES[2], "min_relative_score": 0.25}]
    assert [s.min_relative_score for s in parse_stages("ioi", entries)] == [0.0, 0.0, 0.25]
    assert [s.min_relative_score for s in parse_stages("ioi", entries, min_relative_score=0.1)] == [0.1, 0.1, 0.25]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "receivers": {"stage": "b", "components": ["q"]}, "position": "END"}], "not an earlier stage"),
        ([{"name": "a", "receivers": "logits", "position": "S2"}], "reads the answer at END"),
        ([{"name": "a", "receivers": "logits"}, {"name": "a", "receivers": "logits"}], "used twice"),
        ([], "no stages"),
        ([{"name": "a", "receivers": "logits", "senders": "all"}], r"\[0\]\.senders: 'all' is not one of"),
        ([{"name": "a", "receivers": "logits", "min_relative_score": 1.5}], r"\[0\]\.min_relative_score: 1.5 is not"),
    ],
)
def test_inconsistent_stages_are_refused(entries, message):
    with pytest.raises(StageError, match=message):
        parse_stages("ioi", entries)


def test_receivers_of_each_stage_kind():
    specs = parse_stages("ioi", IOI_STAGES)
    assert stage_receivers(specs[0], []) == "logits"
    assert stage_receivers(specs[1], [(3, 1), (2, 0)]) == [(2, 0, "q"), (3, 1, "q")]
    receivers = stage_receivers(specs[2], [(2, 0)])
    assert receivers == [(2, 0, "k"), (2, 0, "v")]
    assert describe_receivers(receivers) == "k: 2.0; v: 2.0"
    assert describe_receivers("logits") == "logits"


def test_score_tables_round_trip_to_grids():
    grid = np.array([[0.1, np.nan], [-0.5, 2.0]])
    table = scores_table(grid, model="m", task="ioi", stage="movers")
    assert list(table.columns) == ["model", "task", "stage", "layer", "head", "score"]
    assert table.loc[(table["layer"] == 1) & (table["head"] == 0), "score"].item() == -0.5
    np.testing.assert_array_equal(grid_from_table(table), grid)
    assert selected_heads(grid, {"top_percent": 50}) == [(1, 1), (1, 0)]
    assert selected_heads(grid, {"threshold": 0.3}) == [(1, 1), (1, 0)]
    assert selected_heads(grid, {"threshold": 0.3}, min_relative_score=0.5) == [(1, 1)]


def _toy_colored_objects(tokenizer):
    text = "Q: On the desk, I see a red cup, a blue pen, and a green bowl. What color is the pen?\nA:"
    tokens = tokenizer(text).input_ids
    words = [tokenizer.decode([t]) for t in tokens]
    color = {w.strip(): i for i, w in enumerate(words) if w.strip() in {"red", "blue", "green"}}
    question = words.index(" What")
    record = {
        "clean_tokens": tokens,
        "corrupted_tokens": tokens,
        "answer": tokenizer(" Blue").input_ids[0],
        "wrong": tokenizer(" Red").input_ids[0],
        "positions": {
            "END": len(tokens) - 1,
            "color_0": color["red"],
            "color_1": color["blue"],
            "color_2": color["green"],
        },
        "spans": {"question": [question, len(tokens) - 2]},
    }
    return from_records("colored_objects", [record, record])


def test_assembled_circuit_selects_per_stage_and_labels_by_the_rules(tiny_model, cached_tiny_model):
    dataset = _toy_colored_objects(load_tokenizer(cached_tiny_model))
    specs = parse_stages(
        "colored_objects",
        [
            {"name": "movers", "receivers": "logits", "position": "END"},
            {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": "END"},
        ],
    )
    movers = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.9, -0.8, 0.1]])
    inhibition = np.full((2, 4), np.nan)
    inhibition[0] = [0.05, 0.7, 0.0, 0.0]
    detectors = detector_scores(tiny_model, seq_len=5, n_sequences=2)
    circuit = assemble_circuit(
        "tiny", tiny_model, dataset, specs, {"movers": movers, "inhibition": inhibition}, {"top_percent": 25}, detectors
    )
    assert circuit.stage("movers").heads == [(1, 1), (1, 2)]
    assert circuit.stage("inhibition").heads == [(0, 1), (0, 0)]
    assert circuit.stage("inhibition").receivers == "q: 1.1,1.2" and circuit.stage("inhibition").below_layer == 2
    roles = {(i.layer, i.head): i.role for i in circuit.head_infos}
    assert roles[(1, 1)] == "mover" and roles[(1, 2)] == "negative_mover"
    for head in [(0, 1), (0, 0)]:
        evidence = circuit.head_info(head).evidence
        expected = "content_gatherer" if evidence["question_share"] > evidence["candidates_share"] else "inhibition"
        assert roles[head] == expected
        assert 0 <= evidence["question_share"] <= 1 and 0 <= evidence["copy_score"] <= 1
    assert circuit.heads() == {(1, 1), (1, 2), (0, 1), (0, 0)}
    assert circuit.stage("inhibition").below_floor == []
    # A floor of 10% of the stage's best keeps 0.05 of 0.7 out of the inhibition stage, and records it.
    floored = [replace(spec, min_relative_score=0.1) for spec in specs]
    grids = {"movers": movers, "inhibition": inhibition}
    circuit = assemble_circuit("tiny", tiny_model, dataset, floored, grids, {"top_percent": 25}, detectors)
    assert circuit.stage("movers").heads == [(1, 1), (1, 2)] and circuit.stage("movers").below_floor == []
    assert circuit.stage("inhibition").heads == [(0, 1)] and circuit.stage("inhibition").below_floor == [(0, 0)]
    assert circuit.stage("inhibition").min_relative_score == 0.1 and circuit.heads() == {(1, 1), (1, 2), (0, 1)}
    assert torch.equal(dataset.end, torch.tensor([len(dataset.records[0]["clean_tokens"]) - 1] * 2))
