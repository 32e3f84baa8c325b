"""Greater-Than prompts: format, roles, the corruption, the metric's year sets, determinism, bad vocabularies."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from circuit_reuse.datasets import DatasetError, make_dataset
from circuit_reuse.datasets.greater_than import CENTURIES, NOUNS
from circuit_reuse.evaluation import evaluate


@pytest.fixture(scope="module")
def dataset(tokenizer_dir):
    return make_dataset("greater_than", 194, seed=3, tokenizer=tokenizer_dir)


def test_prompt_format_roles_and_corruption(dataset, tokenizer_dir):
    from circuit_reuse.datasets.vocab import as_tokenizer

    tokenizer = as_tokenizer(tokenizer_dir)
    for record, clean, corrupted in zip(dataset.records, dataset.clean_tokens, dataset.corrupted_tokens, strict=True):
        xx, yy, noun = record["century"], record["yy"], record["noun"]
        assert record["clean_text"] == f"The {noun} lasted from the year {xx}{yy:02d} to the year {xx}"
        assert record["corrupted_text"] == f"The {noun} lasted from the year {xx}01 to the year {xx}"
        assert xx in CENTURIES and noun in NOUNS and 2 <= yy <= 98
        words = [tokenizer.decode([t]) for t in record["clean_tokens"]]
        assert words == ["The", f" {noun}", " lasted", " from", " the", " year", f" {xx}", f"{yy:02d}", " to", " the",
                         " year", f" {xx}"]  # fmt: skip
        pos = record["positions"]
        assert (pos["noun"], pos["XX"], pos["YY"], pos["END"]) == (1, 6, 7, 11)
        assert (clean != corrupted).nonzero().flatten().tolist() == [7]
        assert (
            tokenizer.decode([record["answer"]]) == f"{yy + 1:02d}"
            and tokenizer.decode([record["wrong"]]) == f"{yy:02d}"
        )


def test_metric_sets_are_the_years_after_and_up_to_the_start_year(dataset, tokenizer_dir):
    from circuit_reuse.datasets.vocab import as_tokenizer

    tokenizer = as_tokenizer(tokenizer_dir)
    assert dataset.metric.name == "prob_diff"
    for record, tokens, weights in zip(dataset.records, dataset.metric_tokens, dataset.metric_weights, strict=True):
        later = {tokenizer.decode([t]) for t, w in zip(tokens.tolist(), weights.tolist(), strict=True) if w > 0}
        earlier = {tokenizer.decode([t]) for t, w in zip(tokens.tolist(), weights.tolist(), strict=True) if w < 0}
        assert later == {f"{k:02d}" for k in range(record["yy"] + 1, 100)}
        assert earlier == {f"{k:02d}" for k in range(record["yy"] + 1)}


def test_endings_are_spread_evenly_and_generation_is_deterministic(dataset, tokenizer_dir):
    counts = {}
    for record in dataset.records:
        counts[record["yy"]] = counts.get(record["yy"], 0) + 1
    assert set(counts) == set(range(2, 99)) and set(counts.values()) == {2}, "194 prompts: each of 97 endings twice"
    again = make_dataset("greater_than", 194, seed=3, tokenizer=tokenizer_dir)
    assert again.records == dataset.records
    other = make_dataset("greater_than", 194, seed=4, tokenizer=tokenizer_dir)
    assert other.records != dataset.records


def test_bad_nouns_and_centuries_are_named_or_dropped(tokenizer_dir):
    with pytest.raises(DatasetError, match="greater_than nouns: .*'hullabaloo'"):
        make_dataset("greater_than", 4, 0, tokenizer_dir, nouns=["war", "hullabaloo"])
    kept = make_dataset("greater_than", 4, 0, tokenizer_dir, nouns=["war", "hullabaloo"], drop_multi_token=True)
    assert {r["noun"] for r in kept.records} == {"war"} and kept.meta["dropped"]["nouns"] == ["hullabaloo"]
    # " 1901" is one token in GPT-2's vocabulary: the 19th century cannot be corrupted to YY = 01.
    with pytest.raises(DatasetError, match="greater_than centuries: year 19 "):
        make_dataset("greater_than", 4, 0, tokenizer_dir, centuries=[17, 19])
    kept = make_dataset("greater_than", 4, 0, tokenizer_dir, centuries=[17, 19], drop_multi_token=True)
    assert {r["century"] for r in kept.records} == {17} and kept.meta["dropped"]["centuries"] == [19]


def test_evaluation_reads_the_probability_difference(tiny_model, cached_tiny_model, dataset):
    subset = dataset.subset(range(6))
    table = evaluate(tiny_model, subset, batch_size=4, progress=False)
    hf = GPT2LMHeadModel.from_pretrained(str(cached_tiny_model)).eval()
    for condition, key in (("clean", "clean_tokens"), ("corrupted", "corrupted_tokens")):
        rows = table[table["condition"] == condition].set_index("prompt")
        for i, record in enumerate(subset.records):
            with torch.no_grad():
                probs = torch.softmax(hf(torch.tensor([record[key]])).logits[0, -1], -1)
            later = sum(
                float(probs[t]) for t, w in zip(record["metric_tokens"], record["metric_weights"], strict=True) if w > 0
            )
            earlier = sum(
                float(probs[t]) for t, w in zip(record["metric_tokens"], record["metric_weights"], strict=True) if w < 0
            )
            assert rows.loc[i, "metric_name"] == "prob_diff"
            assert rows.loc[i, "metric"] == pytest.approx(later - earlier, abs=1e-5)
            assert rows.loc[i, "prob_target"] == pytest.approx(later if condition == "clean" else earlier, abs=1e-5)
            top = int(probs.argmax())
            targets = {t for t, w in zip(record["metric_tokens"], record["metric_weights"], strict=True)
                       if (w > 0 if condition == "clean" else w < 0)}  # fmt: skip
            assert bool(rows.loc[i, "correct"]) == (top in targets)
