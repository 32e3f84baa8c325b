"""The Hub download path of `cache_model`, against a local stand-in for the Hub (tests/hub_server.py) that
serves a small random model: a good download, and the ways an endpoint fails."""

import json
import shutil
import time

import pytest
from hub_server import COMMIT, HubServer

from circuit_reuse.datasets import DatasetError
from circuit_reuse.datasets.vocab import cache_tokenizer
from circuit_reuse.models import ModelCacheError, ModelSpec, cache_model, verify_cache

REPO_ID = "openai-community/tiny-test"


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory, cached_tiny_model):
    """What the Hub would hold for the model: its checkpoint and tokenizer files, no cache bookkeeping."""
    files = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(cached_tiny_model, files, ignore=shutil.ignore_patterns("manifest.json", ".circuit-reuse-cache"))
    return files


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; these tests talk to 127.0.0.1 only."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def _cache(hub, online, dest, timeout=60.0):
    online.setenv("HF_ENDPOINT", hub.endpoint)
    return cache_model(ModelSpec(name="tiny-hub", source="hub", hub_id=REPO_ID), dest, hub_timeout=timeout)


def test_a_good_download_is_cached_with_its_commit(hub_files, online, tmp_path, cached_tiny_model):
    with HubServer(REPO_ID, hub_files) as hub:
        manifest = _cache(hub, online, tmp_path / "tiny-hub")
    assert manifest["origin"] == {"endpoint": hub.endpoint, "commit": COMMIT}
    assert manifest["spec"]["revision"] == "main"
    original = json.loads((cached_tiny_model / "manifest.json").read_text())["files"]
    assert manifest["files"]["model.safetensors"] == original["model.safetensors"]
    assert verify_cache(tmp_path / "tiny-hub") == manifest
    assert not (tmp_path / "tiny-hub" / ".cache").exists()
    # every file was asked for at the resolved commit, never at the moving branch
    resolves = [path for _, path in hub.requests if "/resolve/" in path]
    assert resolves and all(f"/resolve/{COMMIT}/" in path for path in resolves)


def test_a_connection_dropped_mid_file_is_resumed(hub_files, online, tmp_path, cached_tiny_model):
    with HubServer(REPO_ID, hub_files, fault="drop", drops=2) as hub:
        manifest = _cache(hub, online, tmp_path / "tiny-hub")
    assert hub.drops_left == 0, "the server did drop connections"
    original = json.loads((cached_tiny_model / "manifest.json").read_text())["files"]
    assert {name: manifest["files"][name] for name in original} == original


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_a_stalled_endpoint_fails_within_the_timeout(hub_files, online, tmp_path):
    with HubServer(REPO_ID, hub_files, fault="stall") as hub:
        started = time.monotonic()
        with pytest.raises(ModelCacheError) as raised:
            _cache(hub, online, tmp_path / "tiny-hub", timeout=2)
        took = time.monotonic() - started
    message = str(raised.value)
    assert 2 <= took < 10
    assert f"'tiny-hub': '{REPO_ID}' (revision 'main') from the Hugging Face Hub at {hub.endpoint}" in message
    assert "no data for 2 s" in message and "hub_timeout" in message and "source: local" in message
    assert _leftovers(tmp_path) == []


def test_a_missing_repository_fails_at_once(hub_files, online, tmp_path):
    with HubServer(REPO_ID, hub_files, fault="404") as hub:
        with pytest.raises(ModelCacheError) as raised:
            _cache(hub, online, tmp_path / "tiny-hub")
    message = str(raised.value)
    assert f"could not download model 'tiny-hub': '{REPO_ID}'" in message and hub.endpoint in message
    assert "attempts" not in message and len([r for r in hub.requests if "/api/models/" in r[1]]) == 1
    assert _leftovers(tmp_path) == []


def test_a_server_error_is_retried_then_named(hub_files, online, tmp_path):
    with HubServer(REPO_ID, hub_files, fault="500") as hub:
        with pytest.raises(ModelCacheError) as raised:
            _cache(hub, online, tmp_path / "tiny-hub")
    message = str(raised.value)
    assert "(3 attempts)" in message and "500" in message and hub.endpoint in message
    assert len([r for r in hub.requests if "/api/models/" in r[1]]) == 3
    assert _leftovers(tmp_path) == []


def test_a_connection_that_always_drops_fails_and_leaves_nothing(hub_files, online, tmp_path):
    with HubServer(REPO_ID, hub_files, fault="drop", drops=10**6) as hub:
        with pytest.raises(ModelCacheError, match="could not download model 'tiny-hub'"):
            _cache(hub, online, tmp_path / "tiny-hub", timeout=20)
    assert _leftovers(tmp_path) == []


def test_the_tokenizer_download_is_bounded_too(hub_files, online, tmp_path):
    online.delenv("CIRCUIT_REUSE_TOKENIZER", raising=False)
    with HubServer(REPO_ID, hub_files, fault="stall") as hub:
        online.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DatasetError, match=f"the tokenizer: '{REPO_ID}' .* at {hub.endpoint}: no data for 1 s"):
            cache_tokenizer(tmp_path / "tokenizer", hub_id=REPO_ID, hub_timeout=1)
    with HubServer(REPO_ID, hub_files) as hub:
        online.setenv("HF_ENDPOINT", hub.endpoint)
        manifest = cache_tokenizer(tmp_path / "tokenizer", hub_id=REPO_ID)
    assert manifest["source"] == "hub" and (tmp_path / "tokenizer" / "vocab.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]
