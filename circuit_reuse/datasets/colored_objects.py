"""Colored Objects (Merullo et al.'s one-shot simplification of BIG-bench reasoning_about_colored_objects).

Every prompt is one solved example and one query, each listing exactly three coloured objects:

    Q: On the table, I see an orange textbook, a red puzzle, and a purple cup. What color is the textbook?
    A: Orange
    Q: On the table, there is a blue pencil, a black necklace, and a yellow lighter. What color is the pencil?
    A:

-> " Blue". Each question reads `Q: On the {surface}, {start} {items}. What color is the {object}?\\nA:`
with items "a {color} {object}" ("an" before a vowel) joined as "X, Y, and Z"; the example's answer is
" {Color}" (capitalised) and the example and query are joined by a newline. Surface, start and the
queried item are drawn independently for the example and the query. Within a question the colours are
distinct and the objects are distinct, and the example and the query share no colour and no object.

Roles (`positions`), all in the query unless said otherwise; a role's position is the LAST token of its
word (every default word is one token):
"color_0", "color_1", "color_2" (the query's colours, in order), "object_0", "object_1", "object_2",
"question_object" (the queried object in the query's question), "example_answer" (the example's answer
colour), "answer_color" (the color_k that answers the query), "wrong_color_0", "wrong_color_1" (the other
two query colours, in order), "END" (the final ":"). Span "question": the query's "What color is the X?"
tokens, [start, end).

With the GPT-2 tokenizer and the default vocabulary every prompt is 62 tokens (no BOS), the query's
colours at 41, 45, 50 and the example's answer at 30.

Corruption "other_object" (the default and only one): the same prompt, but the query's question asks
about one of the two other objects of its list, so its answer is another colour in context.
`answer` is " {Color}" of the queried object; `wrong` is " {Color}" of the corrupted question's object.

Source (`source`): "generated" draws prompts as above; "paper" reads the paper's own 1000 seed-42 prompts
and their minimal-difference partners (shipped in circuit_reuse/data/colored_objects_paper/ with their MIT
License; `paper_records`). Each paper prompt is parsed back into its example and query, rebuilt piece by
piece, and must reproduce the paper's text and answers exactly; its roles are then computed and validated
as for a generated prompt. The first n are used; the seed plays no part.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from circuit_reuse.datasets.core import END, DatasetError
from circuit_reuse.datasets.vocab import (
    as_tokenizer,
    check_single_tokens,
    encode,
    last_token,
    require_count,
    tokenize_pieces,
)
from circuit_reuse.metrics import LogitDifference
from circuit_reuse.tasks import Task, register, word_list_option

TASK = "colored_objects"
N_ITEMS = 3
ROLES = (
    "color_0",
    "color_1",
    "color_2",
    "object_0",
    "object_1",
    "object_2",
    "question_object",
    "example_answer",
    "answer_color",
    "wrong_color_0",
    "wrong_color_1",
    END,
)
SPANS = ("question",)
CORRUPTIONS = ("other_object",)
DEFAULT_CORRUPTION = "other_object"

SURFACES = ("table", "desk", "floor")
STARTS = ("there is", "you see", "I see")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
OBJECTS = (
    "pencil", "notebook", "pen", "cup", "plate", "jug", "mug", "puzzle", "textbook",
    "leash", "necklace", "bracelet", "bottle", "ball", "envelope", "lighter", "bowl",
)  # fmt: skip

_VOWELS = "aeiouAEIOU"

SOURCES = ("generated", "paper")
PAPER_DATA = Path(__file__).resolve().parent.parent / "data" / "colored_objects_paper"
PAPER_FILES = {
    "clean": ("cobjs_data_42.json", "1b749fc6f36c32b5cbaa611c140a1238d2ab894c4da5d98e8bdb6799602e3160"),
    "corrupted": ("cobjs_mindiff_data_42.json", "54e72c67d18843842bf50c5a7784b7ca309fc2b6588f74f192a601ca3d3cb271"),
}
PAPER_SEED = 42
_QUESTION = re.compile(
    r"Q: On the (?P<surface>.+?), (?P<start>.+?) (?P<items>an? .+)\. What color is the (?P<asked>\S+)\?"
)
_ITEM = re.compile(r"an? (?P<color>\S+) (?P<object>\S+)")


def capitalized(color: str) -> str:
    """The answer's form of a colour: first letter upper-case, the rest unchanged ("orange" -> "Orange")."""
    return color[:1].upper() + color[1:]


def article(word: str) -> str:
    return "an" if word[:1] in _VOWELS else "a"


def question_pieces(
    surface: str, start: str, colors: list[str], objects: list[str], asked: int, tag: str
) -> list[tuple[str, str | None]]:
    """One question, `Q: On the {surface}, {start} {items}. What color is the {object}?\\nA:`, as labelled pieces.

    Labels carry `tag` (e.g. "query.color_0"); the question "What color is the X?" is labelled
    `{tag}.question` (start) to `{tag}.question_end` (the "?").
    """
    pieces: list[tuple[str, str | None]] = [("Q: On the", None), (" " + surface, None), (",", None)]
    pieces.append((" " + start, None))
    for k in range(N_ITEMS):
        if k == N_ITEMS - 1:
            pieces.append((", and", None))
        elif k > 0:
            pieces.append((",", None))
        pieces.append((" " + article(colors[k]), None))
        pieces.append((" " + colors[k], f"{tag}.color_{k}"))
        pieces.append((" " + objects[k], f"{tag}.object_{k}"))
    pieces.append((".", None))
    pieces.append((" What color is the", f"{tag}.question"))
    pieces.append((" " + objects[asked], f"{tag}.question_object"))
    pieces.append(("?", f"{tag}.question_end"))
    pieces.append(("\nA:", None))
    return pieces


def prompt_pieces(example: dict[str, Any], query: dict[str, Any], query_asked: int) -> list[tuple[str, str | None]]:
    """The whole one-shot prompt: the example with its answer, a newline, then the query (asking `query_asked`)."""
    pieces = question_pieces(**example, tag="example")
    pieces.append((" " + capitalized(example["colors"][example["asked"]]), "example.answer"))
    pieces.append(("\n", None))
    pieces.extend(question_pieces(**{**query, "asked": query_asked}, tag="query"))
    return pieces


def generate(
    n: int,
    seed: int,
    tokenizer: Any,
    colors: list[str] | None = None,
    objects: list[str] | None = None,
    surfaces: list[str] | None = None,
    starts: list[str] | None = None,
    drop_multi_token: bool = False,
    source: str = "generated",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate `n` Colored Objects prompts for `seed`; returns (records, meta) in the core layout.

    With `source="paper"` the records are the paper's first `n` prompts (`paper_records`) and the
    vocabulary options must be left at None.

    None for a list means the paper's (COLORS, OBJECTS, SURFACES, STARTS). Colours must be single tokens
    both as " red" and " Red", objects as " pencil"; with `drop_multi_token` the others are left out and
    listed in meta["dropped"]. At least six colours and six objects must remain, since the example and
    the query share none. Everything is drawn with Python's `random.Random(seed)`.
    """
    if n < 1:
        raise DatasetError(f"{TASK}: n must be at least 1, got {n}")
    tokenizer = as_tokenizer(tokenizer)
    if source not in SOURCES:
        raise DatasetError(f"{TASK} source: {source!r} is not one of {', '.join(SOURCES)}")
    if source == "paper":
        given = [
            k for k, v in {"colors": colors, "objects": objects, "surfaces": surfaces, "starts": starts}.items() if v
        ]
        if given:
            raise DatasetError(f"{TASK}: source paper uses the paper's prompts; leave {', '.join(given)} unset")
        return paper_records(n, tokenizer), _meta(n, PAPER_SEED, {"source": source}, {})
    dropped: dict[str, list[str]] = {}
    colors, dropped["colors"] = check_single_tokens(
        COLORS if colors is None else colors,
        tokenizer,
        f"{TASK} colors",
        forms=(lambda c: " " + c, lambda c: " " + capitalized(c)),
        drop=drop_multi_token,
    )
    if len({capitalized(c) for c in colors}) != len(colors):
        raise DatasetError(f"{TASK} colors: two colours have the same capitalised answer form")
    objects, dropped["objects"] = check_single_tokens(
        OBJECTS if objects is None else objects, tokenizer, f"{TASK} objects", drop=drop_multi_token
    )
    why = "the example and the query each need three, and they share none"
    require_count(colors, 2 * N_ITEMS, f"{TASK} colors", why)
    require_count(objects, 2 * N_ITEMS, f"{TASK} objects", why)
    # Surfaces and starts are no roles: they need not be single tokens (positions are computed per prompt).
    surfaces = _phrases(SURFACES if surfaces is None else surfaces, f"{TASK} surfaces")
    starts = _phrases(STARTS if starts is None else starts, f"{TASK} starts")

    rng = random.Random(seed)
    records = []
    for i in range(n):
        six_colors = rng.sample(colors, 2 * N_ITEMS)
        six_objects = rng.sample(objects, 2 * N_ITEMS)
        example = {
            "surface": rng.choice(surfaces),
            "start": rng.choice(starts),
            "colors": six_colors[:N_ITEMS],
            "objects": six_objects[:N_ITEMS],
            "asked": rng.randrange(N_ITEMS),
        }
        query = {
            "surface": rng.choice(surfaces),
            "start": rng.choice(starts),
            "colors": six_colors[N_ITEMS:],
            "objects": six_objects[N_ITEMS:],
        }
        answer_index = rng.randrange(N_ITEMS)
        corrupted_index = rng.choice([k for k in range(N_ITEMS) if k != answer_index])
        records.append(_record(tokenizer, example, query, answer_index, corrupted_index, f"{TASK} {i}"))
    options = {
        "source": source,
        "colors": colors,
        "objects": objects,
        "surfaces": surfaces,
        "starts": starts,
        "drop_multi_token": drop_multi_token,
    }
    return records, _meta(n, seed, options, dropped)


def _meta(n: int, seed: int, options: dict[str, Any], dropped: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "task": TASK,
        "n_prompts": n,
        "seed": seed,
        "options": options,
        "dropped": dropped,
        "roles": list(ROLES),
        "spans": list(SPANS),
        "corruptions": list(CORRUPTIONS),
        "default_corruption": DEFAULT_CORRUPTION,
        "answer": "' {Color}' of the queried object (answer); of the corrupted question's object (wrong)",
    }


def read_paper_pairs(which: str) -> list[tuple[str, str]]:
    """The paper's [prompt, answer] pairs, "clean" or "corrupted", after checking the file's sha256."""
    name, expected = PAPER_FILES[which]
    path = PAPER_DATA / name
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise DatasetError(f"{path}: sha256 differs from the paper's release ({expected}); the file was changed")
    return [(prompt, answer) for prompt, answer in json.loads(data)]


def parse_question(text: str, what: str) -> dict[str, Any]:
    """One question of a paper prompt as {surface, start, colors, objects, asked}."""
    match = _QUESTION.fullmatch(text)
    items = [_ITEM.fullmatch(item) for item in re.split(r", and |, ", match["items"])] if match else []
    if not match or len(items) != N_ITEMS or not all(items):
        raise DatasetError(f"{what}: {text!r} is not a question of the Colored Objects format")
    objects = [item["object"] for item in items]
    if match["asked"] not in objects:
        raise DatasetError(f"{what}: the question asks about {match['asked']!r}, which is not in its list")
    return {
        "surface": match["surface"],
        "start": match["start"],
        "colors": [item["color"] for item in items],
        "objects": objects,
        "asked": objects.index(match["asked"]),
    }


def paper_records(n: int, tokenizer: Any) -> list[dict[str, Any]]:
    """The paper's first `n` prompts as records, each rebuilt from its parsed parts and checked against its text."""
    clean, corrupted = read_paper_pairs("clean"), read_paper_pairs("corrupted")
    if n > len(clean):
        raise DatasetError(f"{TASK}: source paper has {len(clean)} prompts; {n} were asked for")
    records = []
    for i in range(n):
        what = f"{TASK} paper prompt {i}"
        (prompt, answer), (partner, partner_answer) = clean[i], corrupted[i]
        example_text, example_answer, query_text = _split_prompt(prompt, what)
        partner_example, _, partner_query = _split_prompt(partner, what + " (minimal difference)")
        example, query = parse_question(example_text, what), parse_question(query_text, what)
        corrupted_query = parse_question(partner_query, what + " (minimal difference)")
        if partner_example != example_text or {**corrupted_query, "asked": 0} != {**query, "asked": 0}:
            raise DatasetError(f"{what}: its minimal-difference partner differs in more than the asked object")
        answer_index, corrupted_index = query.pop("asked"), corrupted_query["asked"]
        record = _record(tokenizer, example, query, answer_index, corrupted_index, what)
        expected = (prompt, partner, answer, partner_answer, example_answer)
        rebuilt = (
            record["clean_text"],
            record["corrupted_text"],
            record["answer_str"],
            record["wrong_str"],
            capitalized(example["colors"][example["asked"]]),
        )
        if rebuilt != expected:
            raise DatasetError(f"{what}: rebuilt as {rebuilt!r}, not the paper's {expected!r}")
        records.append({**record, "paper_index": i})
    return records


def _split_prompt(prompt: str, what: str) -> tuple[str, str, str]:
    """(example question, example answer colour, query question) of one paper prompt."""
    parts = prompt.split("\n")
    if len(parts) != 4 or not parts[1].startswith("A: ") or parts[3] != "A:":
        raise DatasetError(f"{what}: {prompt!r} is not a one-shot Colored Objects prompt")
    return parts[0], parts[1][len("A: ") :], parts[2]


def _phrases(items, what: str) -> list[str]:
    items = list(items)
    if not items:
        raise DatasetError(f"{what}: the list is empty")
    for item in items:
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise DatasetError(f"{what}: {item!r} is not a phrase (empty, or with surrounding spaces)")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise DatasetError(f"{what}: duplicate items {', '.join(map(repr, duplicates))}")
    return items


def _record(tokenizer, example, query, answer_index, corrupted_index, what) -> dict[str, Any]:
    clean_pieces = prompt_pieces(example, query, answer_index)
    corrupt_pieces = prompt_pieces(example, query, corrupted_index)
    clean, labels = tokenize_pieces(tokenizer, clean_pieces, what)
    corrupted, corrupted_labels = tokenize_pieces(tokenizer, corrupt_pieces, what + " (other_object)")
    if len(corrupted) != len(clean) or corrupted_labels != labels:
        raise DatasetError(f"{what}: the corrupted prompt's tokens do not line up with the clean prompt's")
    positions = {f"color_{k}": last_token(labels, f"query.color_{k}") for k in range(N_ITEMS)}
    positions.update({f"object_{k}": last_token(labels, f"query.object_{k}") for k in range(N_ITEMS)})
    positions["question_object"] = last_token(labels, "query.question_object")
    positions["example_answer"] = last_token(labels, "example.answer")
    positions["answer_color"] = positions[f"color_{answer_index}"]
    wrong = [k for k in range(N_ITEMS) if k != answer_index]
    positions["wrong_color_0"] = positions[f"color_{wrong[0]}"]
    positions["wrong_color_1"] = positions[f"color_{wrong[1]}"]
    positions[END] = len(clean) - 1
    answer_str = " " + capitalized(query["colors"][answer_index])
    wrong_str = " " + capitalized(query["colors"][corrupted_index])
    record = {
        "clean_tokens": clean,
        "corrupted_tokens": corrupted,
        "answer": encode(tokenizer, answer_str)[0],
        "wrong": encode(tokenizer, wrong_str)[0],
        "positions": positions,
        "spans": {"question": [labels["query.question"][0], labels["query.question_end"][1]]},
        "corruptions": {"other_object": corrupted},
        "clean_text": "".join(text for text, _ in clean_pieces),
        "corrupted_text": "".join(text for text, _ in corrupt_pieces),
        "answer_str": answer_str,
        "wrong_str": wrong_str,
        "answer_index": answer_index,
        "corrupted_answer_index": corrupted_index,
        "surface": query["surface"],
        "start": query["start"],
        "colors": list(query["colors"]),
        "objects": list(query["objects"]),
        "example": dict(example),
    }
    validate_record(record, tokenizer, what)
    return record


def validate_record(record: dict[str, Any], tokenizer: Any, what: str = TASK) -> None:
    """Check one record's constraints, roles and corruption against its own tokens; raise DatasetError."""
    clean, corrupted, pos = record["clean_tokens"], record["corrupted_tokens"], record["positions"]
    colors, objects, example = record["colors"], record["objects"], record["example"]
    k, c = record["answer_index"], record["corrupted_answer_index"]

    def word(tokens, role):
        return tokenizer.decode([tokens[pos[role]]])

    problems = []
    if len(set(colors)) != N_ITEMS or len(set(objects)) != N_ITEMS:
        problems.append("the query's colours or objects repeat")
    if len(set(example["colors"])) != N_ITEMS or len(set(example["objects"])) != N_ITEMS:
        problems.append("the example's colours or objects repeat")
    if set(colors) & set(example["colors"]) or set(objects) & set(example["objects"]):
        problems.append("the example and the query share a colour or an object")
    for j in range(N_ITEMS):
        if word(clean, f"color_{j}") != " " + colors[j] or word(clean, f"object_{j}") != " " + objects[j]:
            problems.append(f"color_{j}/object_{j} do not point at the query's item {j}")
    if word(clean, "question_object") != " " + objects[k] or word(corrupted, "question_object") != " " + objects[c]:
        problems.append("question_object does not point at the asked object")
    if word(clean, "example_answer") != " " + capitalized(example["colors"][example["asked"]]):
        problems.append("example_answer does not point at the example's answer")
    if pos["answer_color"] != pos[f"color_{k}"] or clean[pos["answer_color"]] != encode(tokenizer, " " + colors[k])[0]:
        problems.append("answer_color is not the answer's colour")
    if [pos["wrong_color_0"], pos["wrong_color_1"]] != [pos[f"color_{j}"] for j in range(N_ITEMS) if j != k]:
        problems.append("wrong_color_0/1 are not the two other colours in order")
    if c == k or tokenizer.decode([record["wrong"]]) != " " + capitalized(colors[c]):
        problems.append("the corrupted answer is not another object's colour")
    if tokenizer.decode([record["answer"]]) != " " + capitalized(colors[k]):
        problems.append("the answer is not the queried object's colour")
    diff = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=False)) if a != b]
    if diff != [pos["question_object"]]:
        problems.append("the corruption must change the question's object and nothing else")
    start, end = record["spans"]["question"]
    if tokenizer.decode(clean[start:end]) != f" What color is the {objects[k]}?":
        problems.append("the question span does not cover 'What color is the X?'")
    if tokenizer.decode(clean) != record["clean_text"] or tokenizer.decode(corrupted) != record["corrupted_text"]:
        problems.append("the tokens do not decode to the prompt's text")
    if pos[END] != len(clean) - 1 or not record["clean_text"].endswith("?\nA:"):
        problems.append("END is not the query's final 'A:'")
    if problems:
        raise DatasetError(f"{what}: {'; '.join(problems)} in {record['clean_text']!r}")


TASK_SPEC = register(
    Task(
        name=TASK,
        label="Colored Objects",
        generate=generate,
        metric=LogitDifference(),
        default_seed=42,
        options_schema={
            "source": {
                "description": (
                    "generated (drawn for the seed from the vocabularies below) or paper (the paper's own 1000 "
                    "seed-42 prompts and their minimal-difference partners, shipped with the project under their "
                    "MIT License; the seed and vocabularies are then not used)"
                ),
                "enum": list(SOURCES),
                "default": "generated",
            },
            "colors": word_list_option(
                "colours, each one token as ' red' and ' Red' (at least 6: example and query share none), or null "
                f"for {', '.join(COLORS)}",
                2 * N_ITEMS,
            ),
            "objects": word_list_option(
                "objects, each one token after a space (at least 6), or null for the paper's 17", 6
            ),
            "surfaces": word_list_option(
                f"what the objects lie on ('On the {{surface}}, ...'), or null for {', '.join(SURFACES)}"
            ),
            "starts": word_list_option(
                "phrases before the list ('..., {start} a red cup, ...'), or null for " + ", ".join(map(repr, STARTS))
            ),
            "drop_multi_token": {"$ref": "#/$defs/drop_multi_token"},
        },
        stages=(
            {"name": "movers", "receivers": "logits", "position": END},
            {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": END},
            {
                "name": "induction",
                "receivers": {"stage": "inhibition", "components": ["k", "v"]},
                "position": "question_object",
            },
        ),
        candidate_roles=("color_0", "color_1", "color_2"),
        roles=ROLES,
        spans=SPANS,
        intervention_heads={"content_gatherers": ("role", "content_gatherer"), "movers": ("stage", "movers")},
        intervention_target=True,
        # The query's colour-object pairs and the asked object: the binding, without the filler.
        skeleton_roles=("color_0", "object_0", "color_1", "object_1", "color_2", "object_2", "question_object"),
    )
)
