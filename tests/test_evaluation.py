"""Baseline evaluation against a plain, prompt-by-prompt forward of the Hugging Face model."""

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

from circuit_reuse.datasets import DatasetError, from_records, make_dataset
from circuit_reuse.evaluation import SUMMARY_COLUMNS, evaluate, summarize


@pytest.fixture(scope="module")
def datasets(tokenizer_dir):
    return {task: make_dataset(task, 11, 3, tokenizer_dir) for task in ("ioi", "colored_objects")}


@pytest.fixture(scope="module")
def hf_model(cached_tiny_model):
    return GPT2LMHeadModel.from_pretrained(str(cached_tiny_model)).eval()


@pytest.fixture(scope="module")
def tables(tiny_model, datasets):
    return {task: evaluate(tiny_model, ds, batch_size=4, progress=False) for task, ds in datasets.items()}


def _reference(hf_model, tokens):
    """Logits at the last token of one unpadded prompt, from the Hugging Face model itself."""
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0, -1]


@pytest.mark.parametrize("task", ["ioi", "colored_objects"])
def test_matches_a_plain_forward_of_each_prompt(task, tables, datasets, hf_model):
    table, dataset = tables[task], datasets[task]
    assert len(table) == 2 * len(dataset)
    for condition, key in (("clean", "clean_tokens"), ("corrupted", "corrupted_tokens")):
        rows = table[table["condition"] == condition].set_index("prompt")
        for i, record in enumerate(dataset.records):
            logits = _reference(hf_model, record[key])
            answer, wrong = record["answer"], record["wrong"]
            target, distractor = (answer, wrong) if condition == "clean" else (wrong, answer)
            row = rows.loc[i]
            assert row["metric_name"] == "logit_diff"
            assert row["metric"] == pytest.approx(float(logits[answer] - logits[wrong]), abs=1e-4)
            assert row["logit_target"] == pytest.approx(float(logits[target]), abs=1e-4)
            assert row["prob_target"] == pytest.approx(float(torch.softmax(logits, -1)[target]), rel=1e-3)
            assert row["top_token"] == int(logits.argmax())
            assert row["correct"] == (int(logits.argmax()) == target)
            assert row["beats_distractor"] == bool(logits[target] > logits[distractor])
            assert row["target_rank"] == int((logits > logits[target]).sum())
            assert row["text"] == record[f"{condition}_text"]


def test_batching_does_not_change_the_numbers(tiny_model, datasets, tables):
    again = evaluate(tiny_model, datasets["ioi"], batch_size=11, progress=False)
    np.testing.assert_allclose(again["metric"], tables["ioi"]["metric"], atol=1e-5)
    assert (again["top_token"] == tables["ioi"]["top_token"]).all()


def test_per_prompt_table_keeps_what_error_analysis_needs(tables):
    ioi, co = tables["ioi"], tables["colored_objects"]
    assert {"template", "order", "io", "s", "answer_str", "text"} <= set(ioi.columns)
    assert {"answer_index", "corrupted_answer_index", "answer_str", "wrong_str"} <= set(co.columns)
    clean, corrupted = ioi[ioi["condition"] == "clean"], ioi[ioi["condition"] == "corrupted"]
    assert (clean["beats_distractor"] == (clean["metric"] > 0)).all()
    assert (corrupted["beats_distractor"] == (corrupted["metric"] < 0)).all()


def test_summary_is_one_tidy_row_per_condition(tables):
    table = pd.concat(tables.values(), ignore_index=True)
    summary = summarize(table, model="tiny", n_resamples=500, seed=1)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 4 and set(summary["condition"]) == {"clean", "corrupted"}
    for _, row in summary.iterrows():
        group = table[(table["task"] == row["task"]) & (table["condition"] == row["condition"])]
        assert row["model"] == "tiny" and row["n"] == 11
        assert row["accuracy"] == pytest.approx(group["correct"].mean())
        assert row["metric_name"] == "logit_diff"
        assert row["metric_mean"] == pytest.approx(group["metric"].mean())
        assert row["prob_target_mean"] == pytest.approx(group["prob_target"].mean())
        assert row["beats_distractor_rate"] == pytest.approx(group["beats_distractor"].mean())
        assert row["metric_ci_low"] <= row["metric_mean"] <= row["metric_ci_high"]
    assert summary.equals(summarize(table, model="tiny", n_resamples=500, seed=1))


def test_a_dataset_from_another_tokenizer_is_refused(tiny_model, datasets):
    records = [dict(r) for r in datasets["ioi"].records]
    records[0]["clean_tokens"] = [records[0]["clean_tokens"][0] + 1, *records[0]["clean_tokens"][1:]]
    with pytest.raises(DatasetError, match="encodes prompt 0 .* differently"):
        evaluate(tiny_model, from_records("ioi", records), progress=False)
    records = [dict(r) for r in datasets["ioi"].records]
    records[3]["answer"] = 60000
    with pytest.raises(DatasetError, match="outside the model's vocabulary"):
        evaluate(tiny_model, from_records("ioi", records), progress=False)
