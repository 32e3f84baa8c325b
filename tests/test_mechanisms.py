"""The mechanism readouts: attention from END to every role, and each head's OV circuit on the answer tokens."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_reuse.datasets import from_records
from circuit_reuse.edits import BASELINE, Condition, Override
from circuit_reuse.head_roles import attention_share, copy_scores
from circuit_reuse.mechanisms import (
    ATTENTION_COLUMNS,
    ReadHead,
    attention_to_roles,
    circuit_read_heads,
    diagonal_rank,
    intervention_reads,
    mechanism_tables,
    ov_copy_tables,
    with_edited_heads,
)


class IdentityOVModel:
    """A one-layer stand-in whose residual stream after layer 0 is the one-hot token, with no norms and W_U
    the identity: head 0's OV circuit is the identity (it copies), head 1's its negative. `weights()` is what
    `ModelWeights` would read from it."""

    def __init__(self, d: int = 6):
        self.cfg = SimpleNamespace(n_layers=1, n_heads=2, device="cpu")
        self.d = d

    def run_with_cache(self, tokens, names_filter):
        return None, {"blocks.0.hook_resid_post": torch.nn.functional.one_hot(tokens, self.d).float()}

    def weights(self):
        eye = torch.eye(self.d)
        return SimpleNamespace(
            layer=lambda layer: SimpleNamespace(norm1_w=None, norm1_b=None),
            norm=lambda x, w, b: x,
            final_norm=lambda x: x,
            head_ov=lambda layer, head: (eye, torch.zeros(self.d), eye if head == 0 else -eye),
            W_U=eye,
        )


def _dataset(n=4, task="toy"):
    records = []
    for i in range(n):
        tokens = [1000 + 7 * i + k for k in range(6)]
        records.append(
            {"clean_tokens": tokens, "corrupted_tokens": tokens, "answer": [1, 3, 4, 1][i], "wrong": [3, 4, 1, 4][i],
             "positions": {"a": 1, "b": 3, "END": 5}}
        )  # fmt: skip
    return from_records(task, records)


def test_an_identity_ov_circuit_copies_and_its_negative_copies_negatively(monkeypatch):
    monkeypatch.setattr("circuit_reuse.head_roles.ModelWeights", lambda model: model.weights())
    heads = [ReadHead(0, 0, "mover"), ReadHead(0, 1, "negative_mover")]
    copy, ov = ov_copy_tables(IdentityOVModel(), _dataset(), heads)
    copy = copy.set_index("role")
    assert copy.loc["mover", ["copy_score", "negative_copy_score", "diagonal_rank"]].tolist() == [1.0, 0.0, 0.0]
    assert copy.loc["negative_mover", ["copy_score", "negative_copy_score", "diagonal_rank"]].tolist() == [
        0.0,
        1.0,
        1.0,
    ]
    assert (copy["n_tokens"] == 3).all()  # the answers and wrong answers 1, 3, 4
    mover = ov[ov["role"] == "mover"]
    assert len(mover) == 9
    expected = (mover["source_token"] == mover["target_token"]).astype(float)
    np.testing.assert_array_equal(mover["logit"], expected)


def test_diagonal_rank_of_a_hand_made_matrix():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0], [5.0, 4.0, 3.0]])
    # own logits rank 0, 1 and 2 within their rows: mean 1 of at most 2
    assert diagonal_rank(logits).item() == pytest.approx(0.5)


def test_attention_under_an_override_is_the_override(tiny_model):
    dataset = _dataset()
    heads = [ReadHead(1, 2, "inhibition"), ReadHead(0, 1, "mover")]
    override = Condition("half", (Override(((1, 2),), ("a", "b"), (0.25, 0.75)),))
    table = attention_to_roles(tiny_model, dataset, heads, [Condition(BASELINE), override], batch_size=3)
    assert list(table.columns) == ATTENTION_COLUMNS
    edited = table[(table["condition"] == "half") & (table["layer"] == 1)].set_index("key_role")["attention"]
    assert edited.to_dict() == pytest.approx({"END": 0.0, "a": 0.25, "b": 0.75})
    assert (table["n_prompts"] == 4).all()
    # The unedited runs agree with an independent read of the attention pattern.
    for role in ("a", "b"):
        mask = torch.zeros_like(dataset.clean_tokens, dtype=torch.bool)
        mask[torch.arange(4), dataset.positions[role]] = True
        shares = attention_share(tiny_model, dataset.clean_tokens, dataset.end, mask, [(1, 2), (0, 1)])
        for (layer, head), share in shares.items():
            for condition in (BASELINE, "half") if (layer, head) == (0, 1) else (BASELINE,):
                row = table[(table["condition"] == condition) & (table["layer"] == layer) & (table["key_role"] == role)]
                assert row["attention"].item() == pytest.approx(share, abs=1e-6)


def test_a_probability_difference_task_is_read_too(tiny_model):
    dataset = _dataset()
    dataset.meta["metric"] = "prob_diff"
    table = attention_to_roles(tiny_model, dataset, [ReadHead(0, 0, "mover")])
    assert set(table["key_role"]) == {"END", "a", "b"} and set(table["condition"]) == {BASELINE}


def test_copy_scores_agree_with_the_circuits_evidence(tiny_model):
    dataset = _dataset()
    heads = [ReadHead(0, 3, "mover"), ReadHead(1, 0, "inhibition")]
    copy, _ = ov_copy_tables(tiny_model, dataset, heads)
    every = copy_scores(tiny_model, dataset.answer_tokens.flatten()).set_index(["layer", "head"])
    for row in copy.itertuples():
        assert row.copy_score == every.loc[(row.layer, row.head), "copy_score"]
        assert row.negative_copy_score == every.loc[(row.layer, row.head), "negative_copy_score"]


def test_edited_heads_join_the_circuit_heads_once():
    circuit = {"heads": [{"layer": 2, "head": 1, "role": "mover"}, {"layer": 1, "head": 0, "role": "inhibition"}]}
    heads = with_edited_heads(circuit_read_heads(circuit), {"inhibition": [(1, 0), (0, 3)], "negative_mover": []})
    assert heads == [
        ReadHead(0, 3, "inhibition", "intervention:inhibition"),
        ReadHead(1, 0, "inhibition"),
        ReadHead(2, 1, "mover"),
    ]


def test_mechanism_tables_cover_every_task_and_keep_empty_ones_shaped(tiny_model):
    datasets = {"toy": _dataset(), "other": _dataset(task="other")}
    heads = {"toy": [ReadHead(0, 0, "mover")], "other": []}
    tables = mechanism_tables(tiny_model, datasets, heads, {})
    assert set(tables["attention"]["task"]) == {"toy"} and set(tables["copy_scores"]["task"]) == {"toy"}
    assert all(isinstance(t, pd.DataFrame) for t in tables.values())


def test_the_intervention_reads_its_conditions_and_the_heads_they_edit():
    heads = {"inhibition": [[1, 0]], "negative_mover": [], "content_gatherers": [[0, 1]], "movers": [[2, 3]]}
    conditions, edited = intervention_reads({"heads": heads}, {}, n_layers=3, n_heads=4, where="test")
    # the paper's conditions: negative_mover has no heads and is skipped, both runs on the inhibition heads
    assert [c.name for c in conditions] == ["none", "inhibition", "both", "content_gatherers_blocked"]
    assert edited == {"inhibition": [(1, 0)], "negative_mover": [], "content_gatherers": [(0, 1)], "movers": []}
