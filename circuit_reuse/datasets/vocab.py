"""Tokenizer helpers shared by the task generators: loading, fingerprinting, single-token checks, and
tokenizing a prompt piece by piece so that every role's token position is known exactly.

Every text is encoded without special tokens: the project never prepends a BOS token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from circuit_reuse.datasets.core import DatasetError

TOKENIZER_MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
TOKENIZER_HUB_ID = "gpt2"


def as_tokenizer(tokenizer: Any):
    """A Hugging Face tokenizer from a tokenizer, a directory holding one, or a model that carries one."""
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        path = Path(tokenizer)
        if not path.is_dir():
            raise DatasetError(f"tokenizer directory {path} does not exist")
        return AutoTokenizer.from_pretrained(str(path))
    if not hasattr(tokenizer, "encode") and getattr(tokenizer, "tokenizer", None) is not None:
        return tokenizer.tokenizer
    if not hasattr(tokenizer, "encode"):
        raise DatasetError(f"expected a tokenizer, a tokenizer directory or a model, got {type(tokenizer).__name__}")
    return tokenizer


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text`, never with a BOS or any other special token added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, added tokens included), independent of its path."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What a dataset's metadata records of the tokenizer it was built with (no paths, so it is portable)."""
    return {"fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": len(tokenizer.get_vocab())}


def check_single_tokens(
    items: Sequence[str],
    tokenizer: Any,
    what: str,
    forms: Sequence[Callable[[str], str]] = (lambda item: " " + item,),
    drop: bool = False,
) -> tuple[list[str], list[str]]:
    """Check that each item is one token in every surface form it takes in a prompt.

    `forms` turn an item into the strings the prompt contains (by default the item after a space, as it
    appears mid-sentence). Returns (kept, dropped). Duplicates and empty items are always errors; an item
    that is not one token is an error naming it and how it splits, unless `drop` is set, when it is left
    out (and at least one item must remain).
    """
    items = list(items)
    if not items:
        raise DatasetError(f"{what}: the list is empty")
    for item in items:
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise DatasetError(f"{what}: {item!r} is not a word (empty, or with surrounding spaces)")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise DatasetError(f"{what}: duplicate items {', '.join(map(repr, duplicates))}")
    kept, dropped, problems = [], [], []
    for item in items:
        splits = []
        for form in forms:
            text = form(item)
            ids = encode(tokenizer, text)
            if len(ids) != 1:
                splits.append(f"{text!r} -> {[tokenizer.decode([i]) for i in ids]}")
        if splits:
            dropped.append(item)
            problems.append(f"{item!r} ({'; '.join(splits)})")
        else:
            kept.append(item)
    if problems and not drop:
        raise DatasetError(
            f"{what}: not a single token for this tokenizer: {', '.join(problems)}. Use single-token items, "
            "or set drop_multi_token: true to leave them out"
        )
    if not kept:
        raise DatasetError(f"{what}: no item is a single token for this tokenizer")
    return kept, dropped


def require_count(items: Sequence[str], minimum: int, what: str, why: str) -> None:
    if len(items) < minimum:
        raise DatasetError(f"{what}: {len(items)} usable item(s), at least {minimum} needed ({why})")


def tokenize_pieces(
    tokenizer: Any, pieces: Iterable[tuple[str, str | None]], what: str = "prompt"
) -> tuple[list[int], dict[str, tuple[int, int]]]:
    """Tokenize a prompt given as (text, label) pieces; return its tokens and each label's [start, end).

    Each piece is tokenized on its own and the results are concatenated; the concatenation must equal the
    tokenization of the whole text, which holds when pieces are cut where GPT-2's pre-tokenizer cuts anyway
    (before a space or punctuation). A mismatch is an error naming the text, so a label can never point
    at the wrong token.
    """
    tokens: list[int] = []
    labels: dict[str, tuple[int, int]] = {}
    text = ""
    for piece, label in pieces:
        ids = encode(tokenizer, piece)
        if label is not None:
            if label in labels:
                raise DatasetError(f"{what}: label {label!r} is used twice")
            labels[label] = (len(tokens), len(tokens) + len(ids))
        tokens.extend(ids)
        text += piece
    if encode(tokenizer, text) != tokens:
        raise DatasetError(
            f"{what}: {text!r} tokenizes differently as a whole than piece by piece, so its role positions "
            "would be wrong; check that every placeholder follows a space"
        )
    return tokens, labels


def last_token(labels: dict[str, tuple[int, int]], label: str) -> int:
    """A role's position: the index of the LAST token of its piece (a multi-token word is read at its end)."""
    start, end = labels[label]
    if end <= start:
        raise DatasetError(f"role {label!r} covers no token")
    return end - 1


def cache_tokenizer(
    dest: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    hub_id: str = TOKENIZER_HUB_ID,
    hub_timeout: float = 60.0,
) -> dict[str, Any]:
    """Copy the GPT-2 tokenizer files to `dest` with a manifest, and return the manifest.

    The source is `tokenizer_dir`, else $CIRCUIT_REUSE_TOKENIZER, else the tokenizer files alone of Hub id
    `hub_id` (about 2 MB). The manifest records the source, each file's sha256 and the vocabulary
    fingerprint that every dataset built from it carries.
    """
    from circuit_reuse.integrity import sha256
    from circuit_reuse.io import versions, write_json
    from circuit_reuse.models import building_beside, resolve_tokenizer_dir

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = resolve_tokenizer_dir(tokenizer_dir)
    with building_beside(dest) as work:
        if source is not None:
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, work / name)
            origin = {"source": "local"}
        else:
            _download_tokenizer(hub_id, work, hub_timeout)
            origin = {"source": "hub", "hub_id": hub_id}
        files = sorted(p.name for p in work.iterdir() if p.is_file())
        manifest = {
            **origin,
            "files": {name: sha256(work / name) for name in files},
            "tokenizer": tokenizer_info(as_tokenizer(work)),
            "versions": versions(),
        }
        dest.mkdir(exist_ok=True)
        for name in TOKENIZER_FILES:
            (dest / name).unlink(missing_ok=True)
        for name in files:
            shutil.move(work / name, dest / name)
    write_json(dest / TOKENIZER_MANIFEST, manifest)
    return manifest


def _download_tokenizer(hub_id: str, work: Path, timeout: float) -> None:
    from circuit_reuse.models import ModelCacheError, download_from_hub

    try:
        download_from_hub(hub_id, "main", work, list(TOKENIZER_FILES), timeout, label="the tokenizer")
    except ModelCacheError as error:
        raise DatasetError(
            f"{error}\nOffline, set `tokenizer:` in the config, or $CIRCUIT_REUSE_TOKENIZER, to a directory holding "
            "the GPT-2 tokenizer files (vocab.json, merges.txt, tokenizer.json)"
        ) from error
    if not any((work / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise DatasetError(f"Hub id {hub_id!r} holds no tokenizer files (vocab.json, tokenizer.json)")
