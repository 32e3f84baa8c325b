"""Colored Objects generator: the paper's format to the character, fixed positions with GPT-2, constraints,
the corruption, determinism and bad input, with the real GPT-2 tokenizer."""

import re
from collections import Counter

import pytest
from transformers import AutoTokenizer

from circuit_reuse.datasets import DatasetError, colored_objects, generate_records, make_dataset, save_dataset

N = 600

# The paper's example prompt (PAPER.md, Task 2), character for character.
PAPER_PROMPT = (
    "Q: On the table, I see an orange textbook, a red puzzle, and a purple cup. What color is the textbook?\n"
    "A: Orange\n"
    "Q: On the table, there is a blue pencil, a black necklace, and a yellow lighter. What color is the pencil?\n"
    "A:"
)

_ITEM = r"(a|an) (\w+) (\w+)"
_QUESTION = rf"Q: On the (\w+), ([\w ]+?) {_ITEM}, {_ITEM}, and {_ITEM}\. What color is the (\w+)\?\nA:"
PROMPT_RE = re.compile(rf"{_QUESTION} (\w+)\n{_QUESTION}")


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def generated(tok):
    return generate_records("colored_objects", N, 42, tok)


@pytest.fixture(scope="module")
def records(generated):
    return generated[0]


def _parse(text):
    """Split a prompt into its example and query by a regular expression, independently of the generator."""
    m = PROMPT_RE.fullmatch(text)
    assert m, text
    g = m.groups()
    example = {"surface": g[0], "start": g[1], "articles": g[2:11:3], "colors": g[3:11:3], "objects": g[4:11:3]}
    example["asked"], example["answer"] = g[11], g[12]
    query = {"surface": g[13], "start": g[14], "articles": g[15:24:3], "colors": g[16:24:3], "objects": g[17:24:3]}
    query["asked"] = g[24]
    return example, query


def test_the_papers_example_to_the_character_and_its_positions(tok):
    example = {
        "surface": "table",
        "start": "I see",
        "colors": ["orange", "red", "purple"],
        "objects": ["textbook", "puzzle", "cup"],
        "asked": 0,
    }
    query = {
        "surface": "table",
        "start": "there is",
        "colors": ["blue", "black", "yellow"],
        "objects": ["pencil", "necklace", "lighter"],
    }
    pieces = colored_objects.prompt_pieces(example, query, 0)
    assert "".join(text for text, _ in pieces) == PAPER_PROMPT
    tokens = tok.encode(PAPER_PROMPT)
    assert len(tokens) == 62
    assert [tok.decode([tokens[i]]) for i in (41, 45, 50, 30)] == [" blue", " black", " yellow", " Orange"]
    assert tok.encode(" Blue") == [tok.convert_tokens_to_ids("ĠBlue")]


def test_the_papers_vocabulary():
    assert colored_objects.COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
    assert len(colored_objects.OBJECTS) == 17 and "lighter" in colored_objects.OBJECTS
    assert colored_objects.SURFACES == ("table", "desk", "floor")
    assert colored_objects.STARTS == ("there is", "you see", "I see")


def test_every_prompt_has_the_format_and_constraints(records):
    for r in records:
        example, query = _parse(r["clean_text"])
        for q in (example, query):
            assert q["surface"] in colored_objects.SURFACES and q["start"] in colored_objects.STARTS
            assert len(set(q["colors"])) == 3 and len(set(q["objects"])) == 3
            assert set(q["colors"]) <= set(colored_objects.COLORS)
            assert set(q["objects"]) <= set(colored_objects.OBJECTS)
            assert [("an" if c[0] in "aeiou" else "a") for c in q["colors"]] == list(q["articles"])
            assert q["asked"] in q["objects"]
        assert not set(example["colors"]) & set(query["colors"])
        assert not set(example["objects"]) & set(query["objects"])
        asked = example["objects"].index(example["asked"])
        assert example["answer"] == example["colors"][asked].capitalize()
        k = query["objects"].index(query["asked"])
        assert k == r["answer_index"] and r["answer_str"] == " " + query["colors"][k].capitalize()
        assert list(query["colors"]) == r["colors"] and list(query["objects"]) == r["objects"]


def test_gpt2_gives_62_tokens_and_fixed_positions(records, tok):
    fixed = {
        "color_0": 41, "color_1": 45, "color_2": 50, "object_0": 42, "object_1": 46, "object_2": 51,
        "question_object": 57, "example_answer": 30, "END": 61,
    }  # fmt: skip
    for r in records:
        assert len(r["clean_tokens"]) == 62 and len(r["corrupted_tokens"]) == 62
        assert tok.encode(r["clean_text"]) == r["clean_tokens"]
        assert {k: r["positions"][k] for k in fixed} == fixed
        assert r["spans"]["question"] == [53, 59]


def test_every_role_decodes_to_its_word(records, tok):
    for r in records:
        pos, t = r["positions"], r["clean_tokens"]

        def word(role, tokens=t, pos=pos):
            return tok.decode([tokens[pos[role]]])

        k = r["answer_index"]
        others = [j for j in range(3) if j != k]
        assert [word(f"color_{j}") for j in range(3)] == [" " + c for c in r["colors"]]
        assert [word(f"object_{j}") for j in range(3)] == [" " + o for o in r["objects"]]
        assert word("question_object") == " " + r["objects"][k]
        assert word("answer_color") == " " + r["colors"][k] and pos["answer_color"] == pos[f"color_{k}"]
        assert [pos["wrong_color_0"], pos["wrong_color_1"]] == [pos[f"color_{j}"] for j in others]
        assert word("example_answer") == " " + r["example"]["colors"][r["example"]["asked"]].capitalize()
        assert word("END") == ":" and pos["END"] == len(t) - 1
        start, end = r["spans"]["question"]
        assert tok.decode(t[start:end]) == f" What color is the {r['objects'][k]}?"
        assert tok.decode([r["answer"]]) == " " + r["colors"][k].capitalize()


def test_answer_index_is_roughly_uniform(records):
    for key in ("answer_index", "corrupted_answer_index"):
        counts = Counter(r[key] for r in records)
        assert set(counts) == {0, 1, 2} and all(150 <= c <= 250 for c in counts.values()), (key, counts)
    assert all(150 <= c <= 250 for c in Counter(r["example"]["asked"] for r in records).values())
    assert len({(r["surface"], r["example"]["surface"]) for r in records}) == 9, "drawn independently"


def test_corruption_asks_about_another_object_of_the_list(records, tok):
    for r in records:
        k, c = r["answer_index"], r["corrupted_answer_index"]
        assert c != k
        assert r["corruptions"] == {"other_object": r["corrupted_tokens"]}
        clean, corrupted = r["clean_tokens"], r["corrupted_tokens"]
        assert [i for i in range(62) if clean[i] != corrupted[i]] == [r["positions"]["question_object"]]
        head, _, _ = r["clean_text"].rpartition(f"What color is the {r['objects'][k]}?")
        assert r["corrupted_text"] == head + f"What color is the {r['objects'][c]}?\nA:"
        _, query = _parse(r["corrupted_text"])
        assert query["asked"] == r["objects"][c]
        assert tok.decode([r["wrong"]]) == " " + r["colors"][c].capitalize() == r["wrong_str"]


def test_dataset_tensors(tok):
    dataset = make_dataset("colored_objects", 20, 42, tok)
    assert tuple(dataset.clean_tokens.shape) == (20, 62)
    assert set(dataset.positions) == set(colored_objects.ROLES)
    assert set(dataset.corruptions) == {"other_object"} and set(dataset.spans) == {"question"}
    assert dataset.spans["question"].tolist() == [[53, 59]] * 20


def test_same_seed_same_bytes_other_seed_other_prompts(tmp_path, tok, generated):
    records, meta = generated
    again, meta_again = generate_records("colored_objects", N, 42, tok)
    a = save_dataset(tmp_path / "a" / "colored_objects.jsonl", records, meta)
    b = save_dataset(tmp_path / "b" / "colored_objects.jsonl", again, meta_again)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a/colored_objects.meta.json").read_bytes() == (
        tmp_path / "b/colored_objects.meta.json"
    ).read_bytes()
    other, _ = generate_records("colored_objects", N, 43, tok)
    assert [r["clean_text"] for r in other] != [r["clean_text"] for r in records]
    assert meta["seed"] == 42 and meta["n_prompts"] == N and meta["task"] == "colored_objects"


def test_multi_token_colour_or_object_is_named_or_dropped(tok):
    colors = [*colored_objects.COLORS, "indigo"]
    with pytest.raises(DatasetError, match=r"colored_objects colors: .*'indigo' \(' indigo' -> "):
        generate_records("colored_objects", 5, 0, tok, colors=colors)
    records, meta = generate_records("colored_objects", 100, 0, tok, colors=colors, drop_multi_token=True)
    assert meta["dropped"]["colors"] == ["indigo"]
    assert not any("indigo" in r["clean_text"].lower() for r in records)
    with pytest.raises(DatasetError, match=r"colored_objects objects: .*'stapler'"):
        generate_records("colored_objects", 5, 0, tok, objects=[*colored_objects.OBJECTS, "stapler"])


def test_other_bad_vocabularies(tok):
    with pytest.raises(DatasetError, match="at least 6"):
        generate_records("colored_objects", 5, 0, tok, colors=["red", "blue", "green", "black", "brown"])
    with pytest.raises(DatasetError, match="at least 6"):
        generate_records("colored_objects", 5, 0, tok, colors=[*colored_objects.COLORS, "teal"], drop_multi_token=True,
                         objects=["cup", "pen", "mug", "bowl", "jug", "stapler"])  # fmt: skip
    with pytest.raises(DatasetError, match="duplicate items 'red'"):
        generate_records("colored_objects", 5, 0, tok, colors=[*colored_objects.COLORS, "red"])
    with pytest.raises(DatasetError, match="surfaces: the list is empty"):
        generate_records("colored_objects", 5, 0, tok, surfaces=[])


def test_user_vocabulary(tok):
    records, meta = generate_records(
        "colored_objects", 50, 1, tok, colors=["red", "orange", "pink", "gold", "grey", "white"],
        objects=["apple", "spoon", "lamp", "kettle", "umbrella", "cup"], surfaces=["shelf"], starts=["there are"],
    )  # fmt: skip
    assert meta["options"]["surfaces"] == ["shelf"]
    for r in records:
        assert r["clean_text"].startswith("Q: On the shelf, there are ")
        assert len(r["clean_tokens"]) == 62
        for j in range(3):
            assert tok.decode([r["clean_tokens"][r["positions"][f"object_{j}"]]]) == " " + r["objects"][j]
    assert any(", an orange " in r["clean_text"] or "there are an orange" in r["clean_text"] for r in records)


def test_paper_source_reads_the_papers_prompts_with_every_role(tokenizer_dir):
    from circuit_reuse.datasets.colored_objects import read_paper_pairs

    dataset = make_dataset("colored_objects", 1000, 0, tokenizer_dir, source="paper")
    clean, corrupted = read_paper_pairs("clean"), read_paper_pairs("corrupted")
    assert dataset.clean_tokens.shape == (1000, 62) and dataset.meta["seed"] == 42
    assert [r["clean_text"] for r in dataset.records] == [prompt for prompt, _ in clean]
    assert [r["corrupted_text"] for r in dataset.records] == [prompt for prompt, _ in corrupted]
    assert [r["answer_str"] for r in dataset.records] == [answer for _, answer in clean]
    assert [r["wrong_str"] for r in dataset.records] == [answer for _, answer in corrupted]
    for role, position in (("color_0", 41), ("color_1", 45), ("color_2", 50), ("example_answer", 30), ("END", 61)):
        assert set(dataset.positions[role].tolist()) == {position}, role
    first = make_dataset("colored_objects", 5, 0, tokenizer_dir, source="paper")
    assert first.records == dataset.records[:5]


def test_paper_source_refuses_vocabularies_and_changed_files(tokenizer_dir, tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="leave colors unset"):
        make_dataset("colored_objects", 5, 0, tokenizer_dir, source="paper", colors=list(colored_objects.COLORS))
    with pytest.raises(DatasetError, match="has 1000 prompts; 1001"):
        make_dataset("colored_objects", 1001, 0, tokenizer_dir, source="paper")
    for name, _ in colored_objects.PAPER_FILES.values():
        (tmp_path / name).write_bytes((colored_objects.PAPER_DATA / name).read_bytes())
    (tmp_path / "cobjs_data_42.json").write_text(
        (tmp_path / "cobjs_data_42.json").read_text().replace("Blue", "Red", 1)
    )
    monkeypatch.setattr(colored_objects, "PAPER_DATA", tmp_path)
    with pytest.raises(DatasetError, match="sha256 differs"):
        make_dataset("colored_objects", 5, 0, tokenizer_dir, source="paper")
