"""Indirect Object Identification (IOI), in the style of Wang et al. (2022).

A prompt names two people, then names one of them again (the subject, S) and stops where the other one
(the indirect object, IO) is the natural next word:

    "When Mary and John went to the store, John gave a drink to" -> " Mary"

Templates use five placeholders: {N1} and {N2}, the two names of the first mention; {S2}, the subject's
second mention; {PLACE} and {OBJECT} (each optional). Every placeholder follows a space, and the template
ends where the IO name is predicted. Each prompt takes one of two orders:

- ABBA: {N1} = IO, {N2} = S ("When Mary and John ..., John gave ... to" -> Mary)
- BABA: {N1} = S, {N2} = IO ("When John and Mary ..., John gave ... to" -> Mary)

Roles (token positions in `positions`): "IO", "S1" (the first mention of S), "S1+1" (the token after
S1), "S2", "END" (the last token). A role's position is the LAST token of its word; with the single-token
vocabulary every role is one token. Templates differ in length, so positions are per prompt.

Corruptions, both of the same length as the clean prompt:
- "flip" (the default, used for path patching): S2 is replaced by the IO name, so the prompt's answer
  becomes S: "When Mary and John went to the store, Mary gave a drink to" -> " John".
- "abc": the three name slots take three further names, distinct and disjoint from IO and S (Wang's
  ABC distribution, used for mean ablation); it has no answer among the clean names.

`answer` is the IO token, `wrong` the S token (the flip prompt's answer).
"""

from __future__ import annotations

import random
import re
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

TASK = "ioi"
ROLES = ("IO", "S1", "S1+1", "S2", END)
CORRUPTIONS = ("flip", "abc")
DEFAULT_CORRUPTION = "flip"
ORDERS = ("ABBA", "BABA")

# The project's own 15 templates in Wang et al.'s style: a first clause naming both people, a second
# clause where the subject hands or says something to the other.
TEMPLATES = (
    "When {N1} and {N2} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "After {N1} and {N2} arrived at the {PLACE}, {S2} handed a {OBJECT} to",
    "Later, {N1} and {N2} walked over to the {PLACE}. {S2} offered a {OBJECT} to",
    "While {N1} and {N2} were waiting at the {PLACE}, {S2} passed a {OBJECT} to",
    "Yesterday {N1} and {N2} met at the {PLACE}, and {S2} brought a {OBJECT} to",
    "Once {N1} and {N2} had left the {PLACE}, {S2} sent a {OBJECT} to",
    "Since {N1} and {N2} were both at the {PLACE}, {S2} lent a {OBJECT} to",
    "Before {N1} and {N2} went home from the {PLACE}, {S2} gave a {OBJECT} to",
    "At the {PLACE}, {N1} and {N2} found a {OBJECT}. {S2} gave it to",
    "Then {N1} and {N2} spent the whole day at the {PLACE}. {S2} showed a {OBJECT} to",
    "So {N1} and {N2} cleaned up the {PLACE} together, and then {S2} threw a {OBJECT} to",
    "Today {N1} and {N2} visited the {PLACE}. Afterwards, {S2} returned the {OBJECT} to",
    "When {N1} and {N2} got back to the {PLACE}, {S2} wanted to give a {OBJECT} to",
    "After a long day at the {PLACE}, {N1} and {N2} sat down, and {S2} gave a {OBJECT} to",
    "Then {N1} and {N2} had an argument at the {PLACE}, and afterwards {S2} said sorry to",
)

# Common English first names, each one GPT-2 token after a space.
NAMES = (
    "Mary", "John", "Tom", "James", "Dan", "Martin", "Amy", "Lisa", "Michael", "Jessica",
    "David", "Sarah", "Paul", "Mark", "Steve", "Kevin", "Laura", "Emma", "Anna", "Rachel",
    "Jane", "Kate", "Alice", "Bob", "Chris", "Peter", "Ryan", "Adam", "Eric", "Brian",
    "Jack", "Henry", "Scott", "Andrew", "Thomas", "Daniel", "Matthew", "Joseph", "Robert", "William",
    "Richard", "Charles", "George", "Frank", "Edward", "Joe", "Sam", "Ben", "Tim", "Jim",
    "Mike", "Nick", "Alex", "Luke", "Jason", "Jeff", "Josh", "Justin", "Kelly", "Karen",
    "Linda", "Susan", "Nancy", "Helen", "Sandra", "Carol", "Ruth", "Sharon", "Michelle", "Amanda",
    "Julie", "Anne", "Maria", "Grace", "Rose", "Elizabeth", "Jennifer", "Victoria", "Claire", "Lucy",
    "Sophie", "Rebecca", "Hannah", "Emily", "Olivia", "Jacob", "Nathan", "Kyle", "Sean", "Patrick",
    "Carl", "Roger", "Tony", "Jerry", "Gary", "Walter", "Arthur", "Harry", "Simon", "Diana",
)  # fmt: skip

PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")

NAME_SLOTS = ("N1", "N2", "S2")
SLOTS = (*NAME_SLOTS, "PLACE", "OBJECT")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_VOWELS = "aeiouAEIOU"


def parse_template(template: str, index: int = 0) -> list[tuple[str, str | None]]:
    """Split a template into (text, slot) parts, checking its placeholders.

    Literal text gets slot None; each slot part is the placeholder's name and its text is the space
    before it, so that a filled slot is tokenized as " Word", as it appears in the sentence.
    """
    where = f"ioi template {index} ({template!r})"
    if not isinstance(template, str) or not template.strip():
        raise DatasetError(f"{where}: empty template")
    if template != template.rstrip():
        raise DatasetError(f"{where}: must not end with a space; it ends where the IO name is predicted")
    found = _PLACEHOLDER.findall(template)
    unknown = sorted(set(found) - set(SLOTS))
    if unknown:
        raise DatasetError(f"{where}: unknown placeholder(s) {', '.join(unknown)}; allowed: {', '.join(SLOTS)}")
    for slot in NAME_SLOTS:
        if found.count(slot) != 1:
            raise DatasetError(f"{where}: needs {{{slot}}} exactly once")
    for slot in ("PLACE", "OBJECT"):
        if found.count(slot) > 1:
            raise DatasetError(f"{where}: {{{slot}}} may appear at most once")
    names_in_order = [s for s in found if s in NAME_SLOTS]
    if names_in_order != list(NAME_SLOTS):
        raise DatasetError(f"{where}: the names must appear in the order {{N1}}, {{N2}}, {{S2}}")
    parts: list[tuple[str, str | None]] = []
    cursor = 0
    for match in _PLACEHOLDER.finditer(template):
        literal = template[cursor : match.start()]
        if not literal.endswith(" "):
            raise DatasetError(f"{where}: {{{match.group(1)}}} must follow a space")
        if literal[:-1]:
            parts.append((literal[:-1], None))
        parts.append((" ", match.group(1)))
        cursor = match.end()
    if template[cursor:]:
        parts.append((template[cursor:], None))
    return parts


def generate(
    n: int,
    seed: int,
    tokenizer: Any,
    templates: list[str] | None = None,
    names: list[str] | None = None,
    places: list[str] | None = None,
    objects: list[str] | None = None,
    drop_multi_token: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate `n` IOI prompts for `seed`; returns (records, meta) in `circuit_reuse.datasets.core` layout.

    None for a list means the built-in one (TEMPLATES, NAMES, PLACES, OBJECTS). Names, places and objects
    must be single tokens after a space; with `drop_multi_token` the others are left out and listed in
    meta["dropped"]. Orders are exactly balanced (n/2 each, shuffled); templates, names, places and
    objects are drawn uniformly with Python's `random.Random(seed)`, so a seed gives the same prompts on
    every platform.
    """
    if n < 1:
        raise DatasetError(f"{TASK}: n must be at least 1, got {n}")
    tokenizer = as_tokenizer(tokenizer)
    templates = list(TEMPLATES if templates is None else templates)
    if not templates:
        raise DatasetError(f"{TASK} templates: the list is empty")
    parsed = [parse_template(t, i) for i, t in enumerate(templates)]
    dropped: dict[str, list[str]] = {}
    names, dropped["names"] = check_single_tokens(
        NAMES if names is None else names, tokenizer, f"{TASK} names", drop=drop_multi_token
    )
    require_count(names, 5, f"{TASK} names", "IO, S and three further names for the ABC corruption")
    places, dropped["places"] = check_single_tokens(
        PLACES if places is None else places, tokenizer, f"{TASK} places", drop=drop_multi_token
    )
    objects, dropped["objects"] = check_single_tokens(
        OBJECTS if objects is None else objects, tokenizer, f"{TASK} objects", drop=drop_multi_token
    )

    rng = random.Random(seed)
    orders = [ORDERS[i % 2] for i in range(n)]
    rng.shuffle(orders)
    records = []
    for i in range(n):
        template_id = rng.randrange(len(templates))
        io, s, *abc = rng.sample(names, 5)
        place = rng.choice(places)
        obj = rng.choice(objects)
        records.append(
            _record(tokenizer, parsed[template_id], template_id, orders[i], io, s, abc, place, obj, f"{TASK} {i}")
        )
    meta = {
        "task": TASK,
        "n_prompts": n,
        "seed": seed,
        "options": {
            "templates": templates,
            "names": names,
            "places": places,
            "objects": objects,
            "drop_multi_token": drop_multi_token,
        },
        "dropped": dropped,
        "roles": list(ROLES),
        "spans": [],
        "corruptions": list(CORRUPTIONS),
        "default_corruption": DEFAULT_CORRUPTION,
        "answer": "IO name token (answer); S name token (wrong, the flip corruption's answer)",
    }
    return records, meta


def _fill(parts, values: dict[str, str]) -> list[tuple[str, str | None]]:
    """The template's parts with slots filled; 'a' becomes 'an' before an object starting with a vowel."""
    pieces: list[tuple[str, str | None]] = []
    for text, slot in parts:
        if slot is None:
            pieces.append((text, None))
            continue
        value = values[slot]
        if slot == "OBJECT" and value[0] in _VOWELS and pieces and pieces[-1][0].endswith(" a"):
            pieces[-1] = (pieces[-1][0] + "n", None)
        pieces.append((text + value, slot))
    return pieces


def _record(tokenizer, parts, template_id, order, io, s, abc, place, obj, what) -> dict[str, Any]:
    first, second = (io, s) if order == "ABBA" else (s, io)
    common = {"PLACE": place, "OBJECT": obj}
    clean_pieces = _fill(parts, {"N1": first, "N2": second, "S2": s, **common})
    flip_pieces = _fill(parts, {"N1": first, "N2": second, "S2": io, **common})
    abc_pieces = _fill(parts, {"N1": abc[0], "N2": abc[1], "S2": abc[2], **common})
    clean, labels = tokenize_pieces(tokenizer, clean_pieces, what)
    flip, _ = tokenize_pieces(tokenizer, flip_pieces, what + " (flip)")
    abc_tokens, _ = tokenize_pieces(tokenizer, abc_pieces, what + " (abc)")
    io_slot, s1_slot = ("N1", "N2") if order == "ABBA" else ("N2", "N1")
    positions = {
        "IO": last_token(labels, io_slot),
        "S1": last_token(labels, s1_slot),
        "S1+1": last_token(labels, s1_slot) + 1,
        "S2": last_token(labels, "S2"),
        END: len(clean) - 1,
    }
    answer_ids, wrong_ids = encode(tokenizer, " " + io), encode(tokenizer, " " + s)
    record = {
        "clean_tokens": clean,
        "corrupted_tokens": flip,
        "answer": answer_ids[0],
        "wrong": wrong_ids[0],
        "positions": positions,
        "corruptions": {"flip": flip, "abc": abc_tokens},
        "clean_text": "".join(text for text, _ in clean_pieces),
        "corrupted_text": "".join(text for text, _ in flip_pieces),
        "corruption_texts": {
            "flip": "".join(text for text, _ in flip_pieces),
            "abc": "".join(text for text, _ in abc_pieces),
        },
        "answer_str": " " + io,
        "wrong_str": " " + s,
        "template": template_id,
        "order": order,
        "io": io,
        "s": s,
        "abc_names": list(abc),
        "place": place,
        "object": obj,
    }
    validate_record(record, tokenizer, what)
    return record


def validate_record(record: dict[str, Any], tokenizer: Any, what: str = TASK) -> None:
    """Check one IOI record's roles and corruptions against its own tokens; raise DatasetError if wrong."""
    clean, flip, abc = record["clean_tokens"], record["corruptions"]["flip"], record["corruptions"]["abc"]
    pos = record["positions"]

    def word(tokens, role):
        return tokenizer.decode([tokens[pos[role]]])

    problems = []
    if len(flip) != len(clean) or len(abc) != len(clean):
        problems.append("corruptions differ in length from the clean prompt")
    if word(clean, "IO") != " " + record["io"] or clean[pos["IO"]] != record["answer"]:
        problems.append("IO does not point at the IO name")
    for role in ("S1", "S2"):
        if word(clean, role) != " " + record["s"] or clean[pos[role]] != record["wrong"]:
            problems.append(f"{role} does not point at the subject's name")
    if not pos["IO"] != pos["S1"] < pos["S1+1"] <= pos["S2"] < pos[END] == len(clean) - 1:
        problems.append(f"roles out of order: {pos}")
    if record["io"] == record["s"]:
        problems.append("IO and S are the same name")
    diff = [i for i, (a, b) in enumerate(zip(clean, flip, strict=False)) if a != b]
    if diff != [pos["S2"]] or flip[pos["S2"]] != record["answer"]:
        problems.append("the flip corruption must replace S2, and only S2, by the IO name")
    names_at = {tokenizer.decode([abc[pos[r]]]).strip() for r in ("IO", "S1", "S2")}
    if len(names_at) != 3 or names_at & {record["io"], record["s"]} or names_at != set(record["abc_names"]):
        problems.append("the abc corruption must use three distinct names, none of them IO or S")
    if problems:
        raise DatasetError(f"{what}: {'; '.join(problems)} in {record['clean_text']!r}")


TASK_SPEC = register(
    Task(
        name=TASK,
        label="IOI",
        generate=generate,
        metric=LogitDifference(),
        options_schema={
            "templates": {
                "description": (
                    "IOI templates, or null for the project's 15. Placeholders: {N1} and {N2} (the first mention "
                    "of the two names: IO then S in ABBA order, S then IO in BABA), {S2} (the subject again), "
                    "optional {PLACE} and {OBJECT}; each after a space, in the order N1, N2, S2; the template ends "
                    'where IO is predicted, e.g. "When {N1} and {N2} went to the {PLACE}, {S2} gave a {OBJECT} to"'
                ),
                "type": ["array", "null"],
                "minItems": 1,
                "uniqueItems": True,
                "items": {
                    "description": "a template with {N1}, {N2} and {S2}, not ending in a space",
                    "type": "string",
                    "pattern": "^(?=.*\\{N1\\})(?=.*\\{N2\\})(?=.*\\{S2\\}).*\\S$",
                },
                "default": None,
            },
            "names": word_list_option(
                "first names, each one token after a space (at least 5), or null for the built-in 100", 5
            ),
            "places": word_list_option(f"places for {{PLACE}}, or null for {', '.join(PLACES)}"),
            "objects": word_list_option(f"objects for {{OBJECT}}, or null for {', '.join(OBJECTS)}"),
            "drop_multi_token": {"$ref": "#/$defs/drop_multi_token"},
        },
        stages=(
            {"name": "movers", "receivers": "logits", "position": END},
            {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": END},
            {"name": "induction", "receivers": {"stage": "inhibition", "components": ["k", "v"]}, "position": "S2"},
            {
                "name": "previous_token",
                "receivers": {"stage": "induction", "components": ["k", "v"]},
                "position": "S1+1",
            },
        ),
        candidate_roles=("IO", "S1", "S2"),
        roles=ROLES,
        ablation_reference="abc",
        intervention_heads={"inhibition": ("role", "inhibition"), "negative_mover": ("role", "negative_mover")},
        # The two names, the repeated subject and END: which name comes back, without the filler.
        skeleton_roles=("IO", "S1", "S2", END),
    )
)
