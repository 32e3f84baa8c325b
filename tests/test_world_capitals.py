"""World Capitals prompts: format, roles, the corruption, determinism, bad vocabularies and templates."""

import pytest

from circuit_reuse.datasets import DatasetError, make_dataset
from circuit_reuse.datasets.vocab import as_tokenizer
from circuit_reuse.datasets.world_capitals import CAPITALS, TEMPLATES


@pytest.fixture(scope="module")
def dataset(tokenizer_dir):
    return make_dataset("world_capitals", 60, seed=5, tokenizer=tokenizer_dir)


def test_prompt_format_roles_and_corruption(dataset, tokenizer_dir):
    tokenizer = as_tokenizer(tokenizer_dir)
    for record in dataset.records:
        country, other = record["country"], record["corrupted_country"]
        template = TEMPLATES[record["template"]]
        assert record["clean_text"] == template.format(country=country)
        assert record["corrupted_text"] == template.format(country=other)
        assert country != other
        assert tokenizer.decode([record["answer"]]) == " " + CAPITALS[country]
        assert tokenizer.decode([record["wrong"]]) == " " + CAPITALS[other]
        clean, corrupted = record["clean_tokens"], record["corrupted_tokens"]
        assert tokenizer.decode([clean[record["positions"]["country"]]]) == " " + country
        assert [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)) if a != b] == [
            record["positions"]["country"]
        ]
        assert record["positions"]["END"] == len(clean) - 1 and record["clean_text"].endswith(" the city of")
    assert dataset.metric.name == "logit_diff"
    assert dataset.metric_tokens.tolist() == dataset.answer_tokens.tolist()


def test_generation_is_deterministic(dataset, tokenizer_dir):
    assert make_dataset("world_capitals", 60, seed=5, tokenizer=tokenizer_dir).records == dataset.records
    assert make_dataset("world_capitals", 60, seed=6, tokenizer=tokenizer_dir).records != dataset.records


def test_multi_token_pairs_are_named_or_dropped(tokenizer_dir):
    pairs = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi"}
    with pytest.raises(DatasetError, match="world_capitals capitals: .*Kenya"):
        make_dataset("world_capitals", 4, 0, tokenizer_dir, capitals=pairs)
    kept = make_dataset("world_capitals", 4, 0, tokenizer_dir, capitals=pairs, drop_multi_token=True)
    assert {r["country"] for r in kept.records} <= {"France", "Japan"}
    assert kept.meta["dropped"]["capitals"] == ["Kenya"]
    with pytest.raises(DatasetError, match="same capital"):
        make_dataset("world_capitals", 4, 0, tokenizer_dir, capitals={"France": "Paris", "Japan": "Paris"})


def test_templates_from_the_config(tokenizer_dir):
    ds = make_dataset("world_capitals", 3, 0, tokenizer_dir, templates=["In {country}, the capital is"])
    assert all(r["clean_text"].startswith("In ") for r in ds.records)
    with pytest.raises(DatasetError, match=r"\{country\} exactly once"):
        make_dataset("world_capitals", 3, 0, tokenizer_dir, templates=["The capital is the city of"])
    with pytest.raises(DatasetError, match="must follow a space"):
        make_dataset("world_capitals", 3, 0, tokenizer_dir, templates=["({country}) capital:"])
