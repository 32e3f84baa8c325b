"""Shared fixtures: the real GPT-2 tokenizer and small random GPT-2 stand-ins in Hugging Face layout.

No GPT-2 weights are available offline, so tests build seeded random models from real GPT-2 configs and
run them through exactly the caching and loading code that real weights go through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from circuit_reuse.models import ModelSpec, cache_model, load_model

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]


def _shared_dir(env: str, relative: str) -> Path | None:
    # CI sets the variables; a developer's checkout has the same files beside the repository.
    if os.environ.get(env):
        return Path(os.environ[env])
    candidate = REPO.parent / "shared" / "gpt2" / relative
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    found = _shared_dir("CIRCUIT_REUSE_TOKENIZER", "tokenizer")
    if found is not None:
        return found
    # A user's machine reaches the Hub: fetch the tokenizer files alone (about 2 MB).
    from huggingface_hub import snapshot_download

    target = tmp_path_factory.mktemp("tokenizer")
    try:
        snapshot_download("gpt2", local_dir=target, allow_patterns=TOKENIZER_FILES)
    except Exception as error:
        pytest.exit(
            f"the tests need the GPT-2 tokenizer: set CIRCUIT_REUSE_TOKENIZER to a directory holding {TOKENIZER_FILES} "
            f"(could not download it: {error})",
            returncode=2,
        )
    return target


@pytest.fixture(scope="session")
def gpt2_configs_dir() -> Path:
    found = _shared_dir("CIRCUIT_REUSE_GPT2_CONFIGS", "configs")
    if found is None:
        pytest.exit(
            "set CIRCUIT_REUSE_GPT2_CONFIGS to a directory holding gpt2.json, gpt2-medium.json, ...", returncode=2
        )
    return found


@pytest.fixture(scope="session")
def cached_tiny_model(tmp_path_factory, tokenizer_dir) -> Path:
    """A cached 2-layer, 4-head random GPT-2 with the real tokenizer."""
    spec = ModelSpec(name="tiny", source="random", overrides={"n_layer": 2, "n_head": 4, "n_embd": 64}, seed=0)
    dest = tmp_path_factory.mktemp("models") / "tiny"
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    return dest


@pytest.fixture(scope="session")
def tiny_model(cached_tiny_model):
    return load_model(cached_tiny_model, device="cpu")


@pytest.fixture(scope="session")
def make_model(tmp_path_factory, tokenizer_dir):
    """Factory for cached-and-loaded random GPT-2 bridges of any small shape: make_model(n_layer=3, ...)."""
    built = {}

    def make(n_layer=2, n_head=4, n_embd=64, seed=0, n_positions=128, architecture="gpt2"):
        key = (n_layer, n_head, n_embd, seed, n_positions, architecture)
        if key not in built:
            overrides = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_positions}
            spec = ModelSpec(name="m", source="random", architecture=architecture, overrides=overrides, seed=seed)
            dest = tmp_path_factory.mktemp("models") / "m"
            cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
            built[key] = load_model(dest, device="cpu")
        return built[key]

    return make


@pytest.fixture(scope="session")
def family_model(tmp_path_factory, tokenizer_dir):
    """Factory for cached-and-loaded random stand-ins of any released architecture, in that family's own config
    fields: family_model("smollm2-135m", num_hidden_layers=2, ...)."""
    built = {}

    def make(architecture: str, seed: int = 0, **overrides):
        key = (architecture, seed, tuple(sorted(overrides.items())))
        if key not in built:
            spec = ModelSpec(
                name="stand-in", source="random", architecture=architecture, overrides=overrides, seed=seed
            )
            dest = tmp_path_factory.mktemp("stand-ins") / "model"
            cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
            built[key] = load_model(dest, device="cpu")
        return built[key]

    return make
