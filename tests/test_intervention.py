"""The intervention experiment: attention edits read back through hooks, statistics on known data, head
selection from circuit files, and the workflow rule run offline on the smoke configuration."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from circuit_reuse.config import ConfigError, validate_config
from circuit_reuse.datasets import from_records, save_dataset
from circuit_reuse.edits import (
    BASELINE,
    Block,
    Condition,
    EditError,
    Override,
    attention_block_hooks,
    attention_override_hooks,
)
from circuit_reuse.evaluation import run_conditions, run_conditions_with_readouts
from circuit_reuse.intervention import (
    BLOCK_CONDITION,
    HEAD_SETS,
    HeadSet,
    InterventionError,
    InterventionSettings,
    accuracy_table,
    heads_from_circuit,
    intervention_experiment,
    model_section,
    plan_conditions,
    prompt_changes,
    random_head_controls,
    random_head_sets,
    resolve_head_sets,
)
from circuit_reuse.io import read_parquet, write_json, write_parquet
from circuit_reuse.paper import PAPER_CONDITIONS, PAPER_HEADS
from circuit_reuse.readouts import mover_readouts, mover_spearman

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# Hand-made Colored Objects prompts, tokenized with the real tokenizer piece by piece, so every role
# position is known. Surfaces and openings of different lengths make prompts of different lengths.

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "brown", "black"]
OBJECTS = ["pencil", "notebook", "cup", "plate", "mug", "puzzle", "textbook", "envelope", "lighter", "bowl"]
SURFACES = ["table", "desk", "kitchen counter"]
STARTS = ["I see", "there is", "you can see"]


def _question(colors, objects, asked, surface="table", start="I see"):
    pieces = [(f"Q: On the {surface}, {start}", None)]
    for k, (color, obj) in enumerate(zip(colors, objects, strict=True)):
        article = " an" if color[0] in "aeiou" else " a"
        if k:
            pieces.append(("," if k < 2 else ", and", None))
        pieces += [(article, None), (" " + color, f"color_{k}"), (" " + obj, f"object_{k}")]
    pieces += [(".", None), (" What color is the", "question_start"), (" " + objects[asked], "question_object")]
    pieces += [("?", "question_end"), ("\nA:", None)]
    return pieces


def _encode(tokenizer, pieces):
    tokens, labels = [], {}
    for text, label in pieces:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if label:
            labels[label] = (len(tokens), len(tokens) + len(ids))
        tokens += ids
    return tokens, labels


def colored_objects_records(tokenizer, n, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        colors = [COLORS[i] for i in rng.choice(len(COLORS), 6, replace=False)]
        objects = [OBJECTS[i] for i in rng.choice(len(OBJECTS), 6, replace=False)]
        ex_asked, asked = rng.integers(3), int(rng.integers(3))
        corrupted_asked = int((asked + 1 + rng.integers(2)) % 3)
        example = _question(colors[:3], objects[:3], ex_asked)
        example += [(" " + colors[ex_asked].capitalize(), "example_answer"), ("\n", None)]

        surface, start = SURFACES[rng.integers(3)], STARTS[rng.integers(3)]

        def prompt(k, example=example, colors=colors, objects=objects, surface=surface, start=start):
            query = _question(colors[3:], objects[3:], k, surface, start)
            return example + [(text, label and "query." + label) for text, label in query]

        clean, labels = _encode(tokenizer, prompt(asked))
        corrupted, _ = _encode(tokenizer, prompt(corrupted_asked))
        last = {name: end - 1 for name, (_, end) in labels.items()}
        positions = {f"color_{k}": last[f"query.color_{k}"] for k in range(3)}
        positions |= {f"object_{k}": last[f"query.object_{k}"] for k in range(3)}
        positions |= {"question_object": last["query.question_object"], "example_answer": last["example_answer"]}
        wrong = [k for k in range(3) if k != asked]
        positions |= {"answer_color": positions[f"color_{asked}"], "END": len(clean) - 1}
        positions |= {"wrong_color_0": positions[f"color_{wrong[0]}"], "wrong_color_1": positions[f"color_{wrong[1]}"]}
        answer = tokenizer.encode(" " + colors[3 + asked].capitalize(), add_special_tokens=False)
        wrong_answer = tokenizer.encode(" " + colors[3 + corrupted_asked].capitalize(), add_special_tokens=False)
        records.append(
            {
                "clean_tokens": clean,
                "corrupted_tokens": corrupted,
                "answer": answer[0],
                "wrong": wrong_answer[0],
                "positions": positions,
                "spans": {"question": [labels["query.question_start"][0], labels["query.question_end"][1]]},
            }
        )
    return records


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def co_records(tokenizer):
    return colored_objects_records(tokenizer, 8, seed=1)


@pytest.fixture(scope="module")
def co_dataset(co_records):
    return from_records("colored_objects", co_records)


@pytest.fixture(scope="module")
def model(make_model):
    return make_model(n_layer=3, n_head=4, n_embd=64, seed=3)


def test_hand_made_prompts_put_roles_where_the_words_are(co_dataset, tokenizer):
    assert len(set(co_dataset.end.tolist())) > 1, "prompts of different lengths exercise per-prompt positions"
    for i, record in enumerate(co_dataset.records):
        tokens = record["clean_tokens"]
        assert tokenizer.decode(tokens[record["positions"]["answer_color"]]).strip().capitalize() == (
            tokenizer.decode(record["answer"]).strip()
        )
        start, end = record["spans"]["question"]
        assert tokenizer.decode(tokens[start:end]).strip().startswith("What color is the")
        assert tokenizer.decode(tokens[end:]) == "\nA:"
        assert co_dataset.end[i] == len(tokens) - 1


# --------------------------------------------------------------------------------------------------
# The override and the block, read back through hooks


def _patterns(model, tokens, hooks=()):
    names = lambda name: name.endswith("hook_pattern") or name.endswith("hook_z") or name.endswith("hook_v")  # noqa: E731
    with model.hooks(fwd_hooks=list(hooks)):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return cache


def test_override_is_the_intended_distribution_and_leaves_everything_else(model, co_dataset):
    heads = [(1, 0), (1, 2), (2, 3)]
    end = co_dataset.end
    keys = torch.stack([co_dataset.positions["wrong_color_0"], co_dataset.positions["wrong_color_1"]], dim=1)
    hooks = attention_override_hooks(heads, end, keys)
    assert [name for name, _ in hooks] == ["blocks.1.attn.hook_pattern", "blocks.2.attn.hook_pattern"]

    # Read back through a second hook on the same hook point, placed after the override.
    seen = {}
    readers = [(f"blocks.{layer}.attn.hook_pattern", _keep(seen, layer)) for layer in (1, 2)]
    model.run_with_hooks(co_dataset.clean_tokens, fwd_hooks=hooks + readers)
    clean = _patterns(model, co_dataset.clean_tokens)
    edited = _patterns(model, co_dataset.clean_tokens, hooks)  # and read back through the cache
    rows = torch.arange(len(co_dataset))
    for layer, head in heads:
        for pattern in (seen[layer], edited[f"blocks.{layer}.attn.hook_pattern"]):
            row = pattern[rows, head, end]  # [prompt, key]
            expected = torch.zeros_like(row)
            expected[rows, keys[:, 0]] = 0.5
            expected[rows, keys[:, 1]] = 0.5
            torch.testing.assert_close(row, expected, rtol=0, atol=0)
    # Untouched: heads not chosen in the edited layer 1 (everywhere), and every query before END.
    for layer in range(3):
        before = clean[f"blocks.{layer}.attn.hook_pattern"]
        after = edited[f"blocks.{layer}.attn.hook_pattern"]
        for i in range(len(co_dataset)):
            n = int(end[i])
            torch.testing.assert_close(after[i, :, :n], before[i, :, :n], rtol=0, atol=0)
    torch.testing.assert_close(
        edited["blocks.1.attn.hook_pattern"][:, [1, 3]], clean["blocks.1.attn.hook_pattern"][:, [1, 3]], rtol=0, atol=0
    )
    assert not torch.equal(edited["blocks.1.attn.hook_pattern"][:, 0], clean["blocks.1.attn.hook_pattern"][:, 0])


def _keep(store, key):
    def hook(tensor, hook=None):
        store[key] = tensor.detach().clone()
        return tensor

    return hook


def test_full_attention_to_one_position_makes_z_that_positions_value(model, co_dataset):
    condition = Condition("one_hot", (Override(((2, 1),), ("wrong_color_0", "wrong_color_1"), (1.0, 0.0)),))
    cache = _patterns(model, co_dataset.clean_tokens, condition.hooks(co_dataset))
    rows = torch.arange(len(co_dataset))
    z = cache["blocks.2.attn.hook_z"][rows, co_dataset.end, 1]
    v = cache["blocks.2.attn.hook_v"][rows, co_dataset.positions["wrong_color_0"], 1]
    torch.testing.assert_close(z, v, rtol=1e-6, atol=1e-6)


def test_edits_of_one_layer_share_one_hook(co_dataset):
    condition = Condition(
        "two_edits",
        (Override(((1, 0), (1, 3)), ("wrong_color_0",)), Override(((1, 2), (2, 0)), ("wrong_color_1",))),
    )
    names = [name for name, _ in condition.hooks(co_dataset)]
    assert names == ["blocks.1.attn.hook_pattern", "blocks.2.attn.hook_pattern"]
    assert condition.heads == [(1, 0), (1, 2), (1, 3), (2, 0)]


def test_override_refuses_future_keys_bad_weights_and_unknown_roles(co_dataset):
    end = torch.tensor([5, 6])
    with pytest.raises(EditError, match="causal"):
        attention_override_hooks([(0, 0)], end, torch.tensor([[3], [7]]))
    with pytest.raises(EditError, match="sum to 1"):
        attention_override_hooks([(0, 0)], end, torch.tensor([[1, 2], [1, 2]]), weights=[0.5, 0.6])
    with pytest.raises(EditError, match="'wrong_colour'.*its roles"):
        Override(((0, 0),), ("wrong_colour",)).row_edit(co_dataset)
    with pytest.raises(InterventionError, match="target_weights"):
        InterventionSettings(target_weights=(1.0,))
    with pytest.raises(InterventionError, match="reserved"):
        InterventionSettings(conditions={"none": ("inhibition",)})


def test_block_zeroes_the_span_and_renormalises_the_rest(model, co_dataset):
    heads = [(1, 1), (1, 3), (2, 2)]
    spans = co_dataset.spans["question"]
    clean = _patterns(model, co_dataset.clean_tokens)
    blocked = _patterns(model, co_dataset.clean_tokens, attention_block_hooks(heads, co_dataset.end, spans))
    rows = torch.arange(len(co_dataset))
    keys = torch.arange(co_dataset.clean_tokens.shape[1])
    inside = (keys[None] >= spans[:, :1]) & (keys[None] < spans[:, 1:])
    for layer, head in heads:
        row = blocked[f"blocks.{layer}.attn.hook_pattern"][rows, head, co_dataset.end]
        assert (row[inside] == 0).all()
        torch.testing.assert_close(row.sum(-1), torch.ones(len(co_dataset)))
    # In the first edited layer the inputs are clean, so the rest is exactly the clean row renormalised.
    for head in (1, 3):
        before = clean["blocks.1.attn.hook_pattern"][rows, head, co_dataset.end].masked_fill(inside, 0)
        after = blocked["blocks.1.attn.hook_pattern"][rows, head, co_dataset.end]
        torch.testing.assert_close(after, before / before.sum(-1, keepdim=True))
    untouched = [0, 2]
    torch.testing.assert_close(
        blocked["blocks.1.attn.hook_pattern"][:, untouched], clean["blocks.1.attn.hook_pattern"][:, untouched]
    )
    with pytest.raises(EditError, match="span 'answer'"):
        Block(((0, 0),), span="answer").row_edit(co_dataset)


# --------------------------------------------------------------------------------------------------
# Accuracy, bootstrap, fixed and introduced errors


def _table(conditions: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for name, correct in conditions.items():
        for prompt, c in enumerate(correct):
            rows.append(
                {"condition": name, "prompt": prompt, "correct": bool(c), "metric": float(c), "prob_target": 0.1}
            )
    return pd.DataFrame(rows)


def test_accuracy_fixed_and_introduced_prompt_by_prompt():
    per_prompt = _table({"none": [1, 0, 0, 0, 1, 0, 1, 0], "both": [1, 1, 1, 0, 0, 1, 1, 1], "x": [0] * 8})
    table = accuracy_table(per_prompt, n_boot=2000, seed=7).set_index("condition")
    assert table.loc["none", "accuracy"] == 3 / 8 and table.loc["both", "accuracy"] == 6 / 8
    assert table.loc["both", "fixed"] == 4 and table.loc["both", "introduced"] == 1
    assert table.loc["both", "delta_accuracy"] == pytest.approx(3 / 8)
    assert table.loc["x", "fixed"] == 0 and table.loc["x", "introduced"] == 3
    assert table.loc["none", "fixed"] == 0 and table.loc["none", "delta_ci_low"] == 0
    assert table.loc["x", "ci_low"] == table.loc["x", "ci_high"] == 0
    for name in ("none", "both"):
        assert table.loc[name, "ci_low"] <= table.loc[name, "accuracy"] <= table.loc[name, "ci_high"]
    assert table.loc["both", "mean_metric"] == pytest.approx(0.75)
    assert list(table.index) == ["none", "both", "x"] and (table["n_boot"] == 2000).all()

    changes = prompt_changes(per_prompt)
    both = changes[changes["condition"] == "both"].set_index("prompt")["change"]
    assert both.tolist() == [
        "still_correct", "fixed", "fixed", "still_wrong", "introduced", "fixed", "still_correct", "fixed",
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Random-head controls


def test_random_heads_are_seeded_matched_and_never_the_intervened_ones():
    medium = PAPER_HEADS["gpt2-medium"]  # the paper's "both" condition in a GPT-2 medium-sized model
    heads = [*medium["inhibition"], *medium["negative_mover"]]
    exclude = [*medium["content_gatherers"], (15, 2)]
    first = random_head_sets(16, heads, repeats=20, seed=5, exclude=exclude, key="both")
    assert first == random_head_sets(16, heads, repeats=20, seed=5, exclude=exclude, key="both")
    assert first != random_head_sets(16, heads, repeats=20, seed=6, exclude=exclude, key="both")
    assert first[:5] == random_head_sets(16, heads, repeats=5, seed=5, exclude=exclude, key="both")
    for chosen in first:
        assert len(chosen) == len(set(chosen)) == 4
        assert all(12 <= layer <= 19 and 0 <= head < 16 for layer, head in chosen)
        assert not set(chosen) & (set(heads) | set(exclude))
    assert len({tuple(c) for c in first}) > 15
    with pytest.raises(InterventionError, match="only 1 heads in layers 2-2"):
        random_head_sets(4, [(2, 0), (2, 1)], repeats=1, seed=0, exclude=[(2, 2)])


def test_random_head_controls_reproduce_for_a_seed(model, co_dataset):
    condition = Condition("inh", (Override(((1, 0), (2, 1)), ("wrong_color_0", "wrong_color_1")),))
    run = lambda seed: random_head_controls(  # noqa: E731
        model, co_dataset, condition, repeats=3, seed=seed, exclude=[(1, 2)], batch_size=5, progress=False
    )
    first, again = run(11), run(11)
    pd.testing.assert_frame_equal(first, again)
    expected = random_head_sets(4, [(1, 0), (2, 1)], 3, 11, [(1, 2)], key="inh")
    assert first["heads"].tolist() == [",".join(f"{layer}.{head}" for layer, head in s) for s in expected]
    assert (first["n_heads"] == 2).all() and (first["layer_min"] >= 1).all() and (first["layer_max"] <= 2).all()
    assert not first["heads"].str.contains(r"\b1\.0\b|\b2\.1\b|\b1\.2\b").any()


# --------------------------------------------------------------------------------------------------
# Mover readouts: attention and direct logit attribution


def test_dla_equals_the_change_from_removing_the_head_from_the_final_residual(model, co_dataset):
    readout = [(1, 2), (2, 0), (2, 3)]
    edited = Condition("edit", (Override(((2, 0),), ("wrong_color_0", "wrong_color_1")),))
    roles = ("answer_color", "wrong_color_0", "wrong_color_1")
    per_prompt, heads = run_conditions_with_readouts(
        model, co_dataset, [Condition(BASELINE), edited], readout, roles, batch_size=3, progress=False
    )
    assert len(heads) == 2 * len(co_dataset) * len(readout)
    hf = model.original_model.transformer.h  # the raw Hugging Face blocks: an independent route to W_O
    d_head = model.cfg.d_head
    rows = torch.arange(len(co_dataset))
    answers = co_dataset.answer_tokens
    end_logits = {}
    for condition in (Condition(BASELINE), edited):
        hooks = condition.hooks(co_dataset)
        with model.hooks(fwd_hooks=hooks):
            logits, cache = model.run_with_cache(co_dataset.clean_tokens)
        end_logits[condition.name] = logits[rows, co_dataset.end]
        scale = cache["ln_final.hook_scale"]
        for layer, head in readout:
            z = cache[f"blocks.{layer}.attn.hook_z"][rows, co_dataset.end, head]
            w = hf[layer].attn.c_proj.weight[head * d_head : (head + 1) * d_head]  # Conv1D: [d_in, d_out]
            out = z @ w

            def remove(resid, hook=None, out=out):
                resid = resid.clone()
                resid[rows, co_dataset.end] -= out
                return resid

            def hold(s, hook=None, scale=scale):
                return scale

            ablated = model.run_with_hooks(
                co_dataset.clean_tokens,
                fwd_hooks=hooks + [("ln_final.hook_in", remove), ("ln_final.hook_scale", hold)],
            )
            final, final_ablated = logits[rows, co_dataset.end], ablated[rows, co_dataset.end]
            diff = final[rows, answers[:, 0]] - final[rows, answers[:, 1]]
            diff_ablated = final_ablated[rows, answers[:, 0]] - final_ablated[rows, answers[:, 1]]
            got = heads[(heads["condition"] == condition.name) & (heads["layer"] == layer) & (heads["head"] == head)]
            got = got.sort_values("prompt")
            np.testing.assert_allclose(got["dla"], (diff - diff_ablated).numpy(), atol=2e-5)
            answer_change = final[rows, answers[:, 0]] - final_ablated[rows, answers[:, 0]]
            np.testing.assert_allclose(got["dla_answer"], answer_change.numpy(), atol=2e-5)
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][rows, head, co_dataset.end]
            for role in roles:
                expected = pattern[rows, co_dataset.positions[role]].numpy()
                np.testing.assert_allclose(got[f"attn_{role}"], expected, atol=1e-7)
    # The readout sees the edited pattern: the overridden head attends half to each wrong colour.
    forced = heads[(heads["condition"] == "edit") & (heads["layer"] == 2) & (heads["head"] == 0)]
    assert np.allclose(forced["attn_wrong_color_0"], 0.5) and np.allclose(forced["attn_answer_color"], 0)
    # The same runs give the per-prompt predictions of run_conditions, in batches of the same shape. The
    # readouts' hooks change the order of float32 sums (5e-8 on a logit of 3e-3 on one processor), and a
    # random model's logits lie about 1e-5 apart, so a target rank may move past logits tied with it.
    plain = run_conditions(model, co_dataset, [Condition(BASELINE), edited], batch_size=3, progress=False)
    pd.testing.assert_frame_equal(per_prompt.drop(columns="target_rank"), plain.drop(columns="target_rank"), atol=1e-6)
    for i in np.flatnonzero(per_prompt["target_rank"].to_numpy() != plain["target_rank"].to_numpy()):
        row = per_prompt.iloc[i]
        end = end_logits[row["condition"]][int(row["prompt"])]
        ties = int((torch.abs(end - float(row["logit_target"])) < 1e-5).sum()) - 1
        assert abs(int(row["target_rank"]) - int(plain["target_rank"].iloc[i])) <= ties, (i, ties)


def test_mover_readouts_average_and_compare_with_the_baseline():
    rows = []
    for condition, shift in (("none", 0.0), ("both", 1.0)):
        for prompt in range(2):
            for layer, head, base in ((3, 0, 1.0), (3, 1, -2.0)):
                rows.append(
                    {
                        "condition": condition, "prompt": prompt, "layer": layer, "head": head,
                        "attn_answer_color": 0.2 + 0.1 * shift, "attn_wrong_color_0": 0.3 - 0.1 * shift,
                        "attn_wrong_color_1": 0.1, "dla": base * (1 + 2 * shift) + prompt, "dla_answer": 0.0,
                    }
                )  # fmt: skip
    movers = mover_readouts(
        pd.DataFrame(rows),
        "answer_color",
        ["wrong_color_0", "wrong_color_1"],
        intervened={"both": [(3, 1)]},
        importance={(3, 0): 0.4},
    ).set_index(["condition", "layer", "head"])
    both = movers.loc[("both", 3, 0)]
    assert both["attn_answer"] == pytest.approx(0.3) and both["attn_wrong"] == pytest.approx(0.3)
    assert both["d_attn_answer"] == pytest.approx(0.1) and both["d_attn_wrong"] == pytest.approx(-0.1)
    assert both["dla"] == pytest.approx(3.5) and both["d_dla"] == pytest.approx(2.0)
    assert both["dla_ratio"] == pytest.approx(3.5 / 1.5) and both["n_prompts"] == 2
    assert both["importance"] == 0.4 and not both["intervened"]
    assert movers.loc[("both", 3, 1), "intervened"] and math.isnan(movers.loc[("both", 3, 1), "importance"])
    assert movers.loc[("none", 3, 1), "d_dla"] == 0


def test_mover_spearman_ranks_each_change_against_importance():
    movers = pd.DataFrame(
        {
            "condition": ["none"] * 4 + ["both"] * 4,
            "d_dla": [0, 0, 0, 0, 1.0, 2.0, 3.0, 4.0],
            "d_attn_answer": [0] * 4 + [4.0, 3.0, 2.0, 1.0],
            "d_attn_wrong": [0] * 8,
            "importance": [0.1, 0.2, 0.3, 0.4] * 2,
        }
    )
    table = mover_spearman(movers).set_index("metric")
    assert table.loc["d_dla", "rho"] == pytest.approx(1.0) and table.loc["d_attn_answer", "rho"] == pytest.approx(-1)
    assert table.loc["d_attn_wrong", "status"] != "ok" and set(table["condition"]) == {"both"}


# --------------------------------------------------------------------------------------------------
# Which heads: config or circuits


def _circuit(task, heads, stages):
    return {
        "model": "m",
        "task": task,
        "selection": {"top_percent": 2.0},
        "stages": [{"name": name, "receivers": "logits", "position": "END", "heads": hs} for name, hs in stages],
        "heads": [
            {"layer": layer, "head": head, "stage": "s", "score": 0.1, "role": role} for layer, head, role in heads
        ],
    }


IOI_CIRCUIT = _circuit(
    "ioi",
    [(2, 1, "inhibition"), (1, 3, "inhibition"), (3, 2, "negative_mover"), (3, 0, "mover"), (0, 1, "induction")],
    [("movers", [[3, 0], [3, 2]]), ("inhibition", [[2, 1], [1, 3]])],
)
CO_CIRCUIT = _circuit(
    "colored_objects",
    [(3, 0, "mover"), (3, 1, "mover"), (2, 2, "negative_mover"), (1, 0, "content_gatherer")],
    [("movers", [[3, 0], [3, 1], [2, 2]]), ("inhibition", [[1, 0]])],
)


def test_auto_heads_come_from_the_circuits_roles_and_stages():
    sets = resolve_head_sets({}, {"ioi": IOI_CIRCUIT, "colored_objects": CO_CIRCUIT}, 4, 4)
    assert sets["inhibition"].heads == [(1, 3), (2, 1)] and sets["inhibition"].source == "circuit:ioi:role=inhibition"
    assert sets["negative_mover"].heads == [(3, 2)]
    assert sets["content_gatherers"].heads == [(1, 0)]
    assert sets["movers"].heads == [(2, 2), (3, 0), (3, 1)] and sets["movers"].source.endswith("stage=movers")
    assert heads_from_circuit(CO_CIRCUIT, role="mover") == [(3, 0), (3, 1)]

    explicit = resolve_head_sets({"inhibition": [[2, 0]], "negative_mover": "auto"}, {"ioi": IOI_CIRCUIT}, 4, 4)
    assert explicit["inhibition"].heads == [(2, 0)] and explicit["inhibition"].source == "config"
    assert explicit["negative_mover"].heads == [(3, 2)]
    assert explicit["movers"].heads == [] and "no colored_objects circuit" in explicit["movers"].note
    with pytest.raises(EditError, match=r"intervention.heads.inhibition: head 12.3 is outside"):
        resolve_head_sets({"inhibition": [list(h) for h in PAPER_HEADS["gpt2-medium"]["inhibition"]]}, {}, 4, 4)


def test_empty_sets_skip_or_shrink_conditions_and_say_so():
    sets = resolve_head_sets({"negative_mover": []}, {"ioi": IOI_CIRCUIT, "colored_objects": CO_CIRCUIT}, 4, 4)
    plans = {p.name: p for p in plan_conditions(sets, InterventionSettings())}
    assert list(plans) == [BASELINE, "inhibition", "negative_mover", "both", BLOCK_CONDITION]
    assert plans["negative_mover"].condition is None and "no heads in negative_mover" in plans["negative_mover"].note
    assert plans["both"].condition.heads == [(1, 3), (2, 1)] and "without negative_mover" in plans["both"].note
    assert plans[BLOCK_CONDITION].condition.heads == [(1, 0)]
    assert InterventionSettings().conditions == PAPER_CONDITIONS


def test_the_experiment_runs_what_it_can_and_records_the_rest(model, co_dataset):
    sets = {
        "inhibition": HeadSet("inhibition", [(1, 1), (2, 2)], "config"),
        "negative_mover": HeadSet("negative_mover", [], "circuit:ioi:role=negative_mover", "none found"),
        "content_gatherers": HeadSet("content_gatherers", [(0, 1)], "config"),
        "movers": HeadSet("movers", [(2, 0), (2, 3), (1, 2)], "config"),
    }
    settings = InterventionSettings(repeats=2, n_boot=100, batch_size=4, n_prompts=6)
    importance = {(2, 0): 0.5, (2, 3): -0.2, (1, 2): 0.1}
    tables = intervention_experiment(model, co_dataset, sets, settings, importance, progress=False)
    accuracy = tables["accuracy"].set_index("condition")
    assert accuracy.loc["negative_mover", "status"] == "skipped"
    assert accuracy.loc["both", "heads"] == "1.1,2.2" and "without negative_mover" in accuracy.loc["both", "note"]
    assert accuracy.loc[BLOCK_CONDITION, "status"] == "ran" and (accuracy["n_boot"] == 100).all()
    assert set(tables["per_prompt"]["condition"]) == {BASELINE, "inhibition", "both", BLOCK_CONDITION}
    assert tables["per_prompt"]["prompt"].max() == 5
    summary = tables["controls_summary"].set_index("condition")
    assert summary.loc["negative_mover", "status"].startswith("skipped")
    # Content gatherers sit in layer 0, whose other three heads are all free: they can be matched.
    assert summary.loc[BLOCK_CONDITION, "status"] == "ran" and summary.loc[BLOCK_CONDITION, "n_repeats"] == 2
    controls = tables["controls"]
    assert len(controls) == 3 * 2 and set(controls["seed"]) == {0}
    intervened = {"1.1", "2.2", "0.1"}
    assert not any(set(h.split(",")) & intervened for h in controls["heads"])
    movers = tables["movers"]
    assert len(movers) == 4 * 3 and set(movers["condition"]) == {BASELINE, "inhibition", "both", BLOCK_CONDITION}
    assert (movers[movers["condition"] == BASELINE]["d_dla"] == 0).all()
    assert set(tables["movers_spearman"]["condition"]) == {"inhibition", "both", BLOCK_CONDITION}
    assert tables["head_sets"].set_index("set").loc["negative_mover", "note"] == "none found"


# --------------------------------------------------------------------------------------------------
# Config


@pytest.fixture
def paper_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_paper_config_intervenes_on_the_papers_heads(paper_config):
    config = validate_config(paper_config)["intervention"]
    medium = config["heads"]["gpt2-medium"]
    for name in ("inhibition", "negative_mover", "content_gatherers"):
        assert [tuple(h) for h in medium[name]] == list(PAPER_HEADS["gpt2-medium"][name])
    assert medium["movers"] == "auto"
    assert "gpt2-small" not in config["heads"]
    assert model_section(config, "gpt2-small")["heads"] == {name: "auto" for name in HEAD_SETS}
    negative_mover = model_section(config, "gpt2-medium")["heads"]["negative_mover"]
    assert [tuple(h) for h in negative_mover] == list(PAPER_HEADS["gpt2-medium"]["negative_mover"])
    settings = InterventionSettings.from_config(config)
    assert settings.conditions == PAPER_CONDITIONS and settings.target_roles == ("wrong_color_0", "wrong_color_1")
    assert settings.target_weights is None and settings.query_role == "END"
    del paper_config["intervention"]
    defaults = validate_config(paper_config)["intervention"]
    assert defaults["heads"] == {} and defaults["random_controls"] == {"repeats": 10, "seed": 0}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda c: c["heads"]["gpt2-medium"].update(inhibition=[[12]]), "intervention.heads.gpt2-medium.inhibition"),
        (lambda c: c["heads"]["gpt2-medium"].update(movers="all"), "intervention.heads.gpt2-medium.movers"),
        (lambda c: c["random_controls"].update(repeats=-1), "intervention.random_controls.repeats"),
        (lambda c: c.update(target_roles=[]), "intervention.target_roles"),
        (lambda c: c["conditions"].update(both=["inhibition", "movers"]), "intervention.conditions.both"),
        (lambda c: c["conditions"].update(none=["inhibition"]), "intervention.conditions"),
        (lambda c: c.update(bootstrap={"n": 10, "sed": 1}), "'sed'"),
    ],
)
def test_bad_intervention_values_name_the_key(paper_config, change, where):
    bad = copy.deepcopy(paper_config)
    change(bad["intervention"])
    with pytest.raises(ConfigError, match=".") as raised:
        validate_config(bad)
    assert where in str(raised.value)


# --------------------------------------------------------------------------------------------------
# The workflow rule on the smoke configuration, with hand-made upstream files (--allowed-rules keeps
# Snakemake from rebuilding them from the rest of the DAG)


def test_smoke_workflow_builds_the_intervention_tables(tmp_path, tokenizer, tokenizer_dir):
    from circuit_reuse.integrity import record_digests
    from circuit_reuse.models import ModelSpec, cache_model

    smoke = yaml.safe_load((REPO / "workflow" / "configs" / "smoke.yaml").read_text())
    entry = smoke["models"]["tiny-a"]
    smoke["models"] = {"tiny-a": entry}
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    cache_model(ModelSpec.from_config("tiny-a", entry), tmp_path / "results/models/tiny-a", tokenizer_dir)
    records = colored_objects_records(tokenizer, 12, seed=2)
    save_dataset(tmp_path / "results/datasets/colored_objects.jsonl", records, {"task": "colored_objects", "seed": 2})
    write_json(tmp_path / "results/circuits/tiny-a/ioi.json", IOI_CIRCUIT)
    write_json(tmp_path / "results/circuits/tiny-a/colored_objects.json", CO_CIRCUIT)
    grid = pd.DataFrame(
        {"layer": np.repeat(np.arange(4), 4), "head": np.tile(np.arange(4), 4), "score": np.linspace(-1, 1, 16)}
    )
    grid = grid.assign(model="tiny-a", task="colored_objects", stage="movers", receivers="logits", position="END")
    write_parquet(tmp_path / "results/patching/tiny-a/colored_objects/movers.parquet", grid)
    # The jobs that would have written these inputs record their sha256, which the intervention job checks.
    record_digests(
        tmp_path / "results" / name
        for name in (
            "models/tiny-a/manifest.json",
            "datasets/colored_objects.jsonl",
            "circuits/tiny-a/ioi.json",
            "circuits/tiny-a/colored_objects.json",
            "patching/tiny-a/colored_objects/movers.parquet",
        )
    )
    targets = [f"results/intervention/tiny-a/{name}.parquet" for name in ("accuracy", "movers_spearman")]
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "--cores", "1",
            "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--allowed-rules", "intervention",
            "--configfile", str(tmp_path / "smoke.yaml"),
            "--directory", str(tmp_path), *targets,
        ],
        env={**os.environ, "CIRCUIT_REUSE_TOKENIZER": str(tokenizer_dir), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results/intervention/tiny-a"
    tables = {p.stem: read_parquet(p) for p in sorted(out.glob("*.parquet"))}
    assert set(tables) == {
        "head_sets", "per_prompt", "accuracy", "controls", "controls_summary", "movers", "movers_spearman",
    }  # fmt: skip
    accuracy = tables["accuracy"].set_index("condition")
    assert list(accuracy.index) == [BASELINE, "inhibition", "negative_mover", "both", BLOCK_CONDITION]
    assert (accuracy["status"] == "ran").all() and (accuracy["model"] == "tiny-a").all()
    assert accuracy.loc["both", "heads"] == "1.3,2.1,3.2"
    assert len(tables["per_prompt"]) == 5 * 12 and len(tables["controls"]) == 4 * 3
    movers = tables["movers"]
    assert len(movers) == 5 * 3 and movers["importance"].notna().all()
    assert (tables["head_sets"]["source"].str.startswith("circuit:")).all()
    log = (tmp_path / "logs/intervention/tiny-a.log").read_text()
    assert "inhibition (circuit:ioi:role=inhibition): 1.3, 2.1" in log


def test_workflow_refuses_heads_for_an_unknown_model_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["intervention"]["heads"]["gpt2-mediun"] = config["intervention"]["heads"].pop("gpt2-medium")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--configfile", str(tmp_path / "typo.yaml"), "--directory", str(tmp_path),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "intervention.heads: no model named 'gpt2-mediun'" in output
