"""IOI generator: format, roles, corruptions, determinism and bad input, with the real GPT-2 tokenizer."""

import re
from collections import Counter

import pytest
from transformers import AutoTokenizer

from circuit_reuse.datasets import (
    DatasetError,
    generate_records,
    ioi,
    load_dataset,
    make_dataset,
    save_dataset,
)

N = 300


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def generated(tok):
    return generate_records("ioi", N, 0, tok)


@pytest.fixture(scope="module")
def records(generated):
    return generated[0]


def _fill(template, record):
    first, second = (record["io"], record["s"]) if record["order"] == "ABBA" else (record["s"], record["io"])
    return template.format(N1=first, N2=second, S2=record["s"], PLACE=record["place"], OBJECT=record["object"])


def test_default_vocabulary_is_single_token_and_the_papers():
    assert len(ioi.TEMPLATES) == 15 and len(set(ioi.TEMPLATES)) == 15
    assert len(ioi.NAMES) == 100 and len(set(ioi.NAMES)) == 100
    assert ioi.PLACES == ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
    assert ioi.OBJECTS == ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")


def test_every_prompt_is_its_template_filled_in(records, tok):
    for r in records:
        assert r["clean_text"] == _fill(ioi.TEMPLATES[r["template"]], r)
        assert tok.decode(r["clean_tokens"]) == r["clean_text"]
        assert tok.encode(r["clean_text"]) == r["clean_tokens"], "no BOS, tokens of the whole text"
        assert r["io"] != r["s"]
        assert r["answer_str"] == " " + r["io"] and r["wrong_str"] == " " + r["s"]
        assert tok.decode([r["answer"]]) == " " + r["io"] and tok.decode([r["wrong"]]) == " " + r["s"]


def test_roles_match_an_independent_search_of_the_tokens(records, tok):
    for r in records:
        words = [tok.decode([t]) for t in r["clean_tokens"]]
        io_at = [i for i, w in enumerate(words) if w == " " + r["io"]]
        s_at = [i for i, w in enumerate(words) if w == " " + r["s"]]
        assert len(io_at) == 1 and len(s_at) == 2
        pos = r["positions"]
        assert set(pos) == {"IO", "S1", "S1+1", "S2", "END"}
        assert (pos["IO"], pos["S1"], pos["S2"]) == (io_at[0], s_at[0], s_at[1])
        assert pos["S1+1"] == pos["S1"] + 1
        assert pos["END"] == len(r["clean_tokens"]) - 1 and words[-1] == " to"
        if r["order"] == "ABBA":
            assert pos["IO"] < pos["S1"]
        else:
            assert pos["S1"] < pos["IO"]


def test_orders_are_balanced_and_every_template_is_used(records, tok):
    assert Counter(r["order"] for r in records) == {"ABBA": N // 2, "BABA": N // 2}
    assert set(Counter(r["template"] for r in records)) == set(range(15))
    odd, _ = generate_records("ioi", 7, 3, tok)
    assert sorted(Counter(r["order"] for r in odd).values()) == [3, 4]


def test_flip_replaces_s2_by_io(records, tok):
    for r in records:
        clean, flip = r["clean_tokens"], r["corruptions"]["flip"]
        assert r["corrupted_tokens"] == flip
        assert [i for i in range(len(clean)) if clean[i] != flip[i]] == [r["positions"]["S2"]]
        assert flip[r["positions"]["S2"]] == r["answer"]
        head, _, tail = r["clean_text"].rpartition(" " + r["s"])
        assert r["corrupted_text"] == head + " " + r["io"] + tail
        assert r["corruption_texts"]["flip"] == r["corrupted_text"]


def test_abc_uses_three_new_names_in_the_name_slots(records, tok):
    for r in records:
        clean, abc = r["clean_tokens"], r["corruptions"]["abc"]
        slots = sorted(r["positions"][k] for k in ("IO", "S1", "S2"))
        assert len(abc) == len(clean)
        assert [i for i in range(len(clean)) if clean[i] != abc[i]] == slots
        names = [tok.decode([abc[i]]).strip() for i in slots]
        assert len(set(names)) == 3 and not set(names) & {r["io"], r["s"]}
        assert tok.decode(abc) == r["corruption_texts"]["abc"]


def test_dataset_pads_templates_of_different_lengths_and_keeps_end_exact(tok):
    dataset = make_dataset("ioi", 60, 1, tok)
    lengths = [len(r["clean_tokens"]) for r in dataset.records]
    assert len(set(lengths)) > 3
    assert dataset.end.tolist() == [n - 1 for n in lengths]
    for i, n in enumerate(lengths):
        assert (dataset.clean_tokens[i, n:] == dataset.pad_token_id).all()
        assert (dataset.corrupted_tokens[i, n:] == dataset.pad_token_id).all()
    assert set(dataset.positions) == {"IO", "S1", "S1+1", "S2", "END"}
    assert set(dataset.corruptions) == {"flip", "abc"}
    assert dataset.answer_tokens[:, 0].tolist() == [r["answer"] for r in dataset.records]
    assert (dataset.corrupted_tokens == dataset.corruptions["flip"]).all()


def test_same_seed_same_bytes_other_seed_other_prompts(tmp_path, tok, generated):
    records, meta = generated
    again, meta_again = generate_records("ioi", N, 0, tok)
    a = save_dataset(tmp_path / "a" / "ioi.jsonl", records, meta)
    b = save_dataset(tmp_path / "b" / "ioi.jsonl", again, meta_again)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a/ioi.meta.json").read_bytes() == (tmp_path / "b/ioi.meta.json").read_bytes()
    other, _ = generate_records("ioi", N, 1, tok)
    assert [r["clean_text"] for r in other] != [r["clean_text"] for r in records]
    loaded = load_dataset(a)
    assert loaded.meta["seed"] == 0 and loaded.meta["task"] == "ioi" and len(loaded) == N
    assert re.fullmatch(r"[0-9a-f]{64}", loaded.meta["tokenizer"]["fingerprint"])
    assert loaded.meta["options"]["names"] == list(ioi.NAMES)


def test_multi_token_name_is_named_in_the_error_or_dropped(tok):
    names = [*ioi.NAMES[:10], "Zbigniew"]
    with pytest.raises(DatasetError, match=r"ioi names: .*'Zbigniew'.*drop_multi_token"):
        generate_records("ioi", 10, 0, tok, names=names)
    records, meta = generate_records("ioi", 200, 0, tok, names=names, drop_multi_token=True)
    assert meta["dropped"]["names"] == ["Zbigniew"]
    assert meta["options"]["names"] == list(ioi.NAMES[:10])
    assert not any("Zbigniew" in r["clean_text"] or "Zbigniew" in r["corruption_texts"]["abc"] for r in records)
    with pytest.raises(DatasetError, match=r"ioi places: .*'stapler'"):
        generate_records("ioi", 10, 0, tok, places=["store", "stapler"])


@pytest.mark.parametrize(
    "template, message",
    [
        ("When {N1} and {N2} went to the {PLACE}, gave a {OBJECT} to", r"needs \{S2\} exactly once"),
        ("When {N1} and {N2} went, {N2} gave a {OBJECT} to", r"needs \{N2\} exactly once"),
        ("When {N2} and {N1} went, {S2} gave it to", "order"),
        ("When {N1} and {N2} went, {S2} gave it to ", "must not end with a space"),
        ("When {N1} and {N2} went,{S2} gave it to", r"\{S2\} must follow a space"),
        ("When {N1} and {N2} met {NAME}, {S2} waved to", "unknown placeholder"),
    ],
)
def test_bad_template_is_named(tok, template, message):
    with pytest.raises(DatasetError, match=message) as raised:
        generate_records("ioi", 5, 0, tok, templates=[ioi.TEMPLATES[0], template])
    assert "template 1" in str(raised.value)


def test_other_bad_vocabularies(tok):
    with pytest.raises(DatasetError, match="at least 5"):
        generate_records("ioi", 5, 0, tok, names=["Mary", "John", "Tom", "Amy"])
    with pytest.raises(DatasetError, match="duplicate items 'Mary'"):
        generate_records("ioi", 5, 0, tok, names=["Mary", "John", "Tom", "Amy", "Mary", "Bob"])
    with pytest.raises(DatasetError, match="empty"):
        generate_records("ioi", 5, 0, tok, templates=[])
    with pytest.raises(DatasetError, match="unknown task 'no_such_task'"):
        generate_records("no_such_task", 5, 0, tok)


def test_user_templates_and_vocabulary(tok):
    templates = [
        "Later {N1} and {N2} ate at the {PLACE}, and {S2} passed a {OBJECT} to",
        "At dawn {N1} and {N2} left, so {S2} wrote to",
    ]
    records, meta = generate_records(
        "ioi", 40, 5, tok, templates=templates, names=["Olivia", "Emma", "Kate", "Lucy", "Mark", "Paul"],
        places=["kitchen"], objects=["apple", "spoon"],
    )  # fmt: skip
    assert meta["options"]["templates"] == templates
    assert {r["template"] for r in records} == {0, 1}
    for r in records:
        if r["template"] == 0 and r["object"] == "apple":
            assert "passed an apple to" in r["clean_text"]
        elif r["template"] == 0:
            assert "passed a spoon to" in r["clean_text"]
        pos = r["positions"]
        assert tok.decode([r["clean_tokens"][pos["IO"]]]) == " " + r["io"]
        assert tok.decode([r["clean_tokens"][pos["S2"]]]) == " " + r["s"]
    assert any("an apple" in r["clean_text"] for r in records)
