"""Greater-Than, in the form of Hanna, Liu and Variengien (2023).

    "The war lasted from the year 1732 to the year 17" -> any of "33", "34", ..., "99"

A prompt names an event and a start year {XX}{YY}; the model should continue the end year's century {XX}
with a two-digit ending greater than YY. With GPT-2's tokenizer " 1732" is two tokens, " 17" and "32",
so the answer is one token "00" ... "99" (no space).

- Nouns: the project's own list of single-token event nouns (" war", " siege", ...).
- Centuries: a century XX is usable for an ending YY when " XXYY" tokenizes as [" XX", "YY"]; a century
  must also allow YY = 01 (the corruption). The default centuries are 11 to 18.
- YY is spread evenly over 02 ... 98: the prompts cycle through those 97 endings, in a seeded random
  order, and each takes a random century usable for its ending.

Roles (`positions`): "noun", "XX" (the start year's century), "YY" (its ending), "END" (the end year's
century, where the answer is predicted).

Corruption "01" (the default and only one): the same prompt with the start year ending in 01, so that
nearly every ending is a valid answer and the clean prompt's information about YY is gone.

Metric: the probability difference (`circuit_reuse.metrics.ProbabilityDifference`), softmax over the whole
vocabulary at END: the summed probability of the endings greater than YY minus that of the endings less
than or equal to YY. Its tokens are the 100 endings "00" ... "99" with weights +1 and -1 (the same sets
for the clean and the corrupted run, as in the original). `answer` is the ending YY + 1 (the smallest
right answer) and `wrong` the ending YY (the largest wrong one), for the tables that name one token each.
"""

from __future__ import annotations

import random
from typing import Any

from circuit_reuse.datasets.core import END, DatasetError
from circuit_reuse.datasets.vocab import as_tokenizer, check_single_tokens, encode, last_token, tokenize_pieces
from circuit_reuse.metrics import ProbabilityDifference
from circuit_reuse.tasks import Task, register, word_list_option

TASK = "greater_than"
ROLES = ("noun", "XX", "YY", END)
CORRUPTIONS = ("01",)
DEFAULT_CORRUPTION = "01"
CORRUPTED_ENDING = 1
ENDINGS = range(2, 99)  # YY of the clean prompts, 02 ... 98

# Events that last a while, each one GPT-2 token after a space.
NOUNS = (
    "war", "expedition", "project", "reign", "drought", "siege", "voyage", "festival", "treaty", "occupation",
    "famine", "campaign", "strike", "boom", "crisis", "revolution", "conflict", "empire", "epidemic", "exhibition",
    "journey", "trial", "tour", "rebellion", "partnership", "alliance", "marriage", "contract", "agreement",
    "plague", "dispute", "friendship", "program", "study", "survey", "mission",
)  # fmt: skip
CENTURIES = (11, 12, 13, 14, 15, 16, 17, 18)


def ending(yy: int) -> str:
    return f"{yy:02d}"


def prompt_pieces(noun: str, century: int, yy: int) -> list[tuple[str, str | None]]:
    return [
        ("The", None),
        (" " + noun, "noun"),
        (" lasted from the year", None),
        (f" {century}", "XX"),
        (ending(yy), "YY"),
        (" to the year", None),
        (f" {century}", "END"),
    ]


def splits_as_pair(tokenizer: Any, century: int, yy: int) -> bool:
    """Whether the year " XXYY" is the two tokens " XX" and "YY"."""
    pair = encode(tokenizer, f" {century}") + encode(tokenizer, ending(yy))
    return len(pair) == 2 and encode(tokenizer, f" {century}{ending(yy)}") == pair


def check_centuries(centuries, tokenizer: Any, drop: bool = False) -> tuple[list[int], list[int], dict[int, list[int]]]:
    """(kept, dropped, usable centuries per ending 02 ... 98).

    A century is kept when " XX" is one token and " XX01" splits as [" XX", "01"]; otherwise it is an error
    naming it, or dropped with `drop`. Every ending must have at least one kept century.
    """
    centuries = list(centuries)
    if not centuries:
        raise DatasetError(f"{TASK} centuries: the list is empty")
    if len(set(centuries)) != len(centuries):
        raise DatasetError(f"{TASK} centuries: duplicate centuries")
    kept, dropped = [], []
    for century in centuries:
        usable = 10 <= century <= 99 and splits_as_pair(tokenizer, century, CORRUPTED_ENDING)
        (kept if usable else dropped).append(century)
    if dropped and not drop:
        splits = "; ".join(
            f"' {c}01' -> {[tokenizer.decode([i]) for i in encode(tokenizer, f' {c}01')]}" for c in dropped
        )
        raise DatasetError(
            f"{TASK} centuries: year {', '.join(map(str, dropped))} is not a two-digit century whose years "
            f"tokenize as [XX][YY] ({splits}). Use such centuries, or set drop_multi_token: true to leave them out"
        )
    usable = {yy: [c for c in kept if splits_as_pair(tokenizer, c, yy)] for yy in ENDINGS}
    missing = [ending(yy) for yy, found in usable.items() if not found]
    if missing:
        raise DatasetError(f"{TASK} centuries: no century tokenizes the endings {', '.join(missing)} as [XX][YY]")
    return kept, dropped, usable


def generate(
    n: int,
    seed: int,
    tokenizer: Any,
    nouns: list[str] | None = None,
    centuries: list[int] | None = None,
    drop_multi_token: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate `n` Greater-Than prompts for `seed`; returns (records, meta) in the core layout.

    None for a list means the built-in NOUNS or CENTURIES. Nouns must be one token after a space, centuries
    must tokenize their years as [XX][YY]; with `drop_multi_token` the others are left out and listed in
    meta["dropped"]. Everything is drawn with Python's `random.Random(seed)`.
    """
    if n < 1:
        raise DatasetError(f"{TASK}: n must be at least 1, got {n}")
    tokenizer = as_tokenizer(tokenizer)
    dropped: dict[str, list[Any]] = {}
    nouns, dropped["nouns"] = check_single_tokens(
        NOUNS if nouns is None else nouns, tokenizer, f"{TASK} nouns", drop=drop_multi_token
    )
    centuries, dropped["centuries"], usable = check_centuries(
        CENTURIES if centuries is None else centuries, tokenizer, drop=drop_multi_token
    )
    endings_tokens = [encode(tokenizer, ending(yy)) for yy in range(100)]
    if any(len(ids) != 1 for ids in endings_tokens):
        raise DatasetError(f"{TASK}: the endings 00 ... 99 must each be one token for this tokenizer")
    endings_tokens = [ids[0] for ids in endings_tokens]

    rng = random.Random(seed)
    order = list(ENDINGS)
    rng.shuffle(order)
    records = []
    for i in range(n):
        yy = order[i % len(order)]
        noun = rng.choice(nouns)
        century = rng.choice(usable[yy])
        records.append(_record(tokenizer, noun, century, yy, endings_tokens, f"{TASK} {i}"))
    meta = {
        "task": TASK,
        "n_prompts": n,
        "seed": seed,
        "options": {"nouns": nouns, "centuries": centuries, "drop_multi_token": drop_multi_token},
        "dropped": dropped,
        "roles": list(ROLES),
        "spans": [],
        "corruptions": list(CORRUPTIONS),
        "default_corruption": DEFAULT_CORRUPTION,
        "answer": "ending YY + 1 (answer) and YY (wrong); the metric sums every ending above and up to YY",
    }
    return records, meta


def _record(tokenizer, noun, century, yy, endings_tokens, what) -> dict[str, Any]:
    clean_pieces = prompt_pieces(noun, century, yy)
    corrupt_pieces = prompt_pieces(noun, century, CORRUPTED_ENDING)
    clean, labels = tokenize_pieces(tokenizer, clean_pieces, what)
    corrupted, corrupted_labels = tokenize_pieces(tokenizer, corrupt_pieces, what + " (01)")
    if len(corrupted) != len(clean) or corrupted_labels != labels:
        raise DatasetError(f"{what}: the corrupted prompt's tokens do not line up with the clean prompt's")
    positions = {role: last_token(labels, role) for role in ("noun", "XX", "YY")}
    positions[END] = len(clean) - 1
    record = {
        "clean_tokens": clean,
        "corrupted_tokens": corrupted,
        "answer": endings_tokens[yy + 1],
        "wrong": endings_tokens[yy],
        "metric_tokens": list(endings_tokens),
        "metric_weights": [1.0 if later > yy else -1.0 for later in range(100)],
        "positions": positions,
        "corruptions": {"01": corrupted},
        "clean_text": "".join(text for text, _ in clean_pieces),
        "corrupted_text": "".join(text for text, _ in corrupt_pieces),
        "answer_str": ending(yy + 1),
        "wrong_str": ending(yy),
        "noun": noun,
        "century": century,
        "yy": yy,
    }
    validate_record(record, tokenizer, what)
    return record


def validate_record(record: dict[str, Any], tokenizer: Any, what: str = TASK) -> None:
    """Check one record's roles, corruption and metric sets against its own tokens; raise DatasetError."""
    clean, corrupted, pos, yy = record["clean_tokens"], record["corrupted_tokens"], record["positions"], record["yy"]

    def word(tokens, role):
        return tokenizer.decode([tokens[pos[role]]])

    problems = []
    if word(clean, "noun") != " " + record["noun"]:
        problems.append("noun does not point at the noun")
    if word(clean, "XX") != f" {record['century']}" or word(clean, END) != f" {record['century']}":
        problems.append("XX and END must point at the century")
    if word(clean, "YY") != ending(yy) or word(corrupted, "YY") != ending(CORRUPTED_ENDING):
        problems.append("YY does not point at the start year's ending")
    if not pos["noun"] < pos["XX"] < pos["YY"] == pos["XX"] + 1 < pos[END] == len(clean) - 1:
        problems.append(f"roles out of order: {pos}")
    diff = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=False)) if a != b]
    if len(corrupted) != len(clean) or diff != [pos["YY"]]:
        problems.append("the corruption must change the start year's ending and nothing else")
    decoded = [tokenizer.decode([t]) for t in record["metric_tokens"]]
    if decoded != [ending(k) for k in range(100)]:
        problems.append("the metric tokens are not the endings 00 ... 99")
    if [k for k, w in enumerate(record["metric_weights"]) if w > 0] != list(range(yy + 1, 100)):
        problems.append("the metric's positive set is not the endings after YY")
    if tokenizer.decode(clean) != record["clean_text"]:
        problems.append("the tokens do not decode to the prompt's text")
    if problems:
        raise DatasetError(f"{what}: {'; '.join(problems)} in {record['clean_text']!r}")


TASK_SPEC = register(
    Task(
        name=TASK,
        label="Greater-Than",
        generate=generate,
        metric=ProbabilityDifference(),
        options_schema={
            "nouns": word_list_option("event nouns, each one token after a space, or null for the built-in 36"),
            "centuries": {
                "description": (
                    "centuries XX (10 to 99) whose years tokenize as [XX][YY], or null for "
                    f"{', '.join(map(str, CENTURIES))}"
                ),
                "type": ["array", "null"],
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "integer", "minimum": 10, "maximum": 99},
                "default": None,
            },
            "drop_multi_token": {"$ref": "#/$defs/drop_multi_token"},
        },
        stages=(
            {"name": "movers", "receivers": "logits", "position": END},
            {"name": "movers_queries", "receivers": {"stage": "movers", "components": ["q"]}, "position": END},
        ),
        candidate_roles=("YY",),
        roles=ROLES,
    )
)
