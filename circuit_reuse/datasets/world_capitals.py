"""World Capitals: recalling a country's capital city.

    "The capital of France is the city of" -> " Paris"

The paper's appendix uses a World Capitals task without publishing its prompt format. This project's
format names the country once and ends on "the city of": a bare "The capital of France is" is as
often continued by " the" or " a" as by a city, whereas after "the city of" the natural next word is
the city itself, so the answer is the next token, as in IOI ("... gave a drink to" -> " Mary"). Templates
have one placeholder, {country}, after a space; the config can replace them and the country-capital pairs.

Countries and capitals must each be one GPT-2 token after a space, so that every prompt of a template
has the same length as its corruption. The built-in 40 pairs are the single-token ones among well-known
capitals, leaving out capitals named like their country and contested ones.

Roles (`positions`): "country", "END" (the last token, where the capital is predicted).

Corruption "other_country" (the default and only one): the same template with another country, so its
answer is that country's capital. `answer` is " {capital}", `wrong` the corrupted country's capital;
the metric is their logit difference.
"""

from __future__ import annotations

import random
import re
from typing import Any

from circuit_reuse.datasets.core import END, DatasetError
from circuit_reuse.datasets.vocab import as_tokenizer, encode, last_token, require_count, tokenize_pieces
from circuit_reuse.metrics import LogitDifference
from circuit_reuse.tasks import Task, register

TASK = "world_capitals"
ROLES = ("country", END)
CORRUPTIONS = ("other_country",)
DEFAULT_CORRUPTION = "other_country"

TEMPLATES = (
    "The capital of {country} is the city of",
    "Everyone knows that the capital of {country} is the city of",
    "Our trip to {country} started in its capital, the city of",
)

CAPITALS = {
    "France": "Paris", "England": "London", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Egypt": "Cairo",
    "Ireland": "Dublin", "Austria": "Vienna", "Canada": "Ottawa", "Australia": "Canberra", "Portugal": "Lisbon",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Hungary": "Budapest",
    "Thailand": "Bangkok", "Iraq": "Baghdad", "Iran": "Tehran", "Afghanistan": "Kabul", "Philippines": "Manila",
    "Indonesia": "Jakarta", "Cuba": "Havana", "Peru": "Lima", "Chile": "Santiago", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Denmark": "Copenhagen", "Syria": "Damascus", "Lebanon": "Beirut",
    "Turkey": "Ankara", "Pakistan": "Islamabad", "Switzerland": "Bern", "Scotland": "Edinburgh",
    "Wales": "Cardiff", "Libya": "Tripoli",
}  # fmt: skip

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def parse_template(template: str, index: int = 0) -> tuple[str, str]:
    """A template as (text before " {country}", text after it), checking its one placeholder."""
    where = f"{TASK} template {index} ({template!r})"
    found = _PLACEHOLDER.findall(template) if isinstance(template, str) else []
    if found != ["country"]:
        raise DatasetError(f"{where}: needs the placeholder {{country}} exactly once, and no other")
    before, after = template.split("{country}")
    if not before.endswith(" "):
        raise DatasetError(f"{where}: {{country}} must follow a space")
    if template != template.rstrip() or not after.strip():
        raise DatasetError(f"{where}: must end, without a space, where the capital is predicted")
    return before[:-1], after


def check_capitals(capitals: dict[str, str], tokenizer: Any, drop: bool = False) -> tuple[dict[str, str], list[str]]:
    """(kept pairs, dropped countries): both names must be one token after a space; capitals distinct."""
    if not capitals:
        raise DatasetError(f"{TASK} capitals: the mapping is empty")
    for country, capital in capitals.items():
        for word in (country, capital):
            if not isinstance(word, str) or not word.strip() or word != word.strip():
                raise DatasetError(f"{TASK} capitals: {word!r} is not a word (empty, or with surrounding spaces)")
    if len(set(capitals.values())) != len(capitals):
        raise DatasetError(f"{TASK} capitals: two countries have the same capital")
    kept, dropped, problems = {}, [], []
    for country, capital in capitals.items():
        splits = [
            f"{text!r} -> {[tokenizer.decode([i]) for i in encode(tokenizer, text)]}"
            for text in (" " + country, " " + capital)
            if len(encode(tokenizer, text)) != 1
        ]
        if splits:
            dropped.append(country)
            problems.append(f"{country} ({'; '.join(splits)})")
        else:
            kept[country] = capital
    if problems and not drop:
        raise DatasetError(
            f"{TASK} capitals: not a single token for this tokenizer: {', '.join(problems)}. Use single-token "
            "countries and capitals, or set drop_multi_token: true to leave them out"
        )
    require_count(kept, 2, f"{TASK} capitals", "the corruption asks about another country")
    return kept, dropped


def generate(
    n: int,
    seed: int,
    tokenizer: Any,
    templates: list[str] | None = None,
    capitals: dict[str, str] | None = None,
    drop_multi_token: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate `n` World Capitals prompts for `seed`; returns (records, meta) in the core layout.

    None means the built-in TEMPLATES or CAPITALS ({country: capital}). A pair whose country or capital is
    not one token is an error naming it, or left out (and listed in meta["dropped"]) with
    `drop_multi_token`. Everything is drawn with Python's `random.Random(seed)`.
    """
    if n < 1:
        raise DatasetError(f"{TASK}: n must be at least 1, got {n}")
    tokenizer = as_tokenizer(tokenizer)
    templates = list(TEMPLATES if templates is None else templates)
    if not templates:
        raise DatasetError(f"{TASK} templates: the list is empty")
    parsed = [parse_template(t, i) for i, t in enumerate(templates)]
    capitals, dropped = check_capitals(dict(CAPITALS if capitals is None else capitals), tokenizer, drop_multi_token)
    countries = list(capitals)

    rng = random.Random(seed)
    records = []
    for i in range(n):
        template_id = rng.randrange(len(templates))
        country, other = rng.sample(countries, 2)
        records.append(_record(tokenizer, parsed[template_id], template_id, country, other, capitals, f"{TASK} {i}"))
    meta = {
        "task": TASK,
        "n_prompts": n,
        "seed": seed,
        "options": {"templates": templates, "capitals": capitals, "drop_multi_token": drop_multi_token},
        "dropped": {"capitals": dropped},
        "roles": list(ROLES),
        "spans": [],
        "corruptions": list(CORRUPTIONS),
        "default_corruption": DEFAULT_CORRUPTION,
        "answer": "' {capital}' of the prompt's country (answer); of the corrupted prompt's country (wrong)",
    }
    return records, meta


def _pieces(parts: tuple[str, str], country: str) -> list[tuple[str, str | None]]:
    before, after = parts
    return [(before, None), (" " + country, "country"), (after, None)]


def _record(tokenizer, parts, template_id, country, other, capitals, what) -> dict[str, Any]:
    clean_pieces, corrupt_pieces = _pieces(parts, country), _pieces(parts, other)
    clean, labels = tokenize_pieces(tokenizer, clean_pieces, what)
    corrupted, _ = tokenize_pieces(tokenizer, corrupt_pieces, what + " (other_country)")
    answer_str, wrong_str = " " + capitals[country], " " + capitals[other]
    record = {
        "clean_tokens": clean,
        "corrupted_tokens": corrupted,
        "answer": encode(tokenizer, answer_str)[0],
        "wrong": encode(tokenizer, wrong_str)[0],
        "positions": {"country": last_token(labels, "country"), END: len(clean) - 1},
        "corruptions": {"other_country": corrupted},
        "clean_text": "".join(text for text, _ in clean_pieces),
        "corrupted_text": "".join(text for text, _ in corrupt_pieces),
        "answer_str": answer_str,
        "wrong_str": wrong_str,
        "template": template_id,
        "country": country,
        "corrupted_country": other,
    }
    validate_record(record, tokenizer, what)
    return record


def validate_record(record: dict[str, Any], tokenizer: Any, what: str = TASK) -> None:
    """Check one record's role, corruption and answers against its own tokens; raise DatasetError."""
    clean, corrupted, pos = record["clean_tokens"], record["corrupted_tokens"], record["positions"]
    problems = []
    if tokenizer.decode([clean[pos["country"]]]) != " " + record["country"]:
        problems.append("country does not point at the country")
    diff = [i for i, (a, b) in enumerate(zip(clean, corrupted, strict=False)) if a != b]
    if len(corrupted) != len(clean) or diff != [pos["country"]]:
        problems.append("the corruption must change the country and nothing else")
    if record["country"] == record["corrupted_country"] or record["answer"] == record["wrong"]:
        problems.append("the corrupted prompt must ask about another country with another capital")
    if tokenizer.decode([record["answer"]]) != record["answer_str"]:
        problems.append("the answer is not the country's capital")
    if pos[END] != len(clean) - 1 or tokenizer.decode(clean) != record["clean_text"]:
        problems.append("END is not the last token, or the tokens do not decode to the prompt")
    if problems:
        raise DatasetError(f"{what}: {'; '.join(problems)} in {record['clean_text']!r}")


TASK_SPEC = register(
    Task(
        name=TASK,
        label="World Capitals",
        generate=generate,
        metric=LogitDifference(),
        options_schema={
            "templates": {
                "description": (
                    "templates with {country} once, after a space, ending where the capital is predicted, or null "
                    f"for the built-in {len(TEMPLATES)}, e.g. {TEMPLATES[0]!r}"
                ),
                "type": ["array", "null"],
                "minItems": 1,
                "uniqueItems": True,
                "items": {"type": "string", "pattern": "^(?=.*\\{country\\}).*\\S$"},
                "default": None,
            },
            "capitals": {
                "description": (
                    "country -> capital, each one token after a space (at least 2 pairs, distinct capitals), or "
                    f"null for the built-in {len(CAPITALS)}"
                ),
                "type": ["object", "null"],
                "minProperties": 2,
                "additionalProperties": {"$ref": "#/$defs/word"},
                "default": None,
            },
            "drop_multi_token": {"$ref": "#/$defs/drop_multi_token"},
        },
        stages=(
            {"name": "movers", "receivers": "logits", "position": END},
            {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": END},
            {
                "name": "induction",
                "receivers": {"stage": "inhibition", "components": ["k", "v"]},
                "position": "country",
            },
        ),
        candidate_roles=("country",),
        roles=ROLES,
    )
)
