import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from circuit_reuse.families import architectures
from circuit_reuse.models import (
    ModelCacheError,
    ModelSpec,
    cache_model,
    load_model,
    load_tokenizer,
    random_gpt2_config,
    verify_cache,
)


def test_cached_model_loads_with_logits_identical_to_hugging_face(cached_tiny_model, tiny_model):
    tokens = tiny_model.tokenizer(
        ["When Mary and John went to the store, John gave a drink to"], return_tensors="pt"
    ).input_ids
    reference = GPT2LMHeadModel.from_pretrained(cached_tiny_model, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = reference(tokens).logits
        actual = tiny_model(tokens)
    assert actual.shape == expected.shape == (1, tokens.shape[1], 50257)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0)


def test_loaded_model_tokenizes_without_bos(tiny_model, cached_tiny_model):
    assert load_tokenizer(cached_tiny_model)(" Blue").input_ids == [4518]
    assert tiny_model.to_tokens(" Blue").tolist() == [[4518]]


def test_loaded_model_is_ready_for_analysis(tiny_model):
    assert not tiny_model.training
    assert all(not p.requires_grad for p in tiny_model.parameters())
    assert tiny_model.cfg.n_layers == 2 and tiny_model.cfg.n_heads == 4


def test_manifest_records_source_hashes_and_config(cached_tiny_model):
    manifest = json.loads((cached_tiny_model / "manifest.json").read_text())
    assert manifest["spec"]["source"] == "random"
    assert manifest["config"]["n_layer"] == 2
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt"} <= set(manifest["files"])
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    assert "torch" in manifest["versions"]


def test_same_seed_gives_byte_identical_weights(tmp_path, tokenizer_dir):
    spec = ModelSpec(name="x", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32}, seed=7)
    a = cache_model(spec, tmp_path / "a", tokenizer_dir=tokenizer_dir)
    b = cache_model(spec, tmp_path / "b", tokenizer_dir=tokenizer_dir)
    assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]
    other = cache_model(
        ModelSpec(name="x", source="random", overrides=spec.overrides, seed=8),
        tmp_path / "c",
        tokenizer_dir=tokenizer_dir,
    )
    assert other["files"]["model.safetensors"] != a["files"]["model.safetensors"]


def test_tampered_weights_are_detected(tmp_path, cached_tiny_model):
    copy = tmp_path / "tiny"
    shutil.copytree(cached_tiny_model, copy)
    verify_cache(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelCacheError, match="model.safetensors no longer matches its manifest"):
        load_model(copy, device="cpu")


def test_missing_and_unlisted_files_are_detected(tmp_path, cached_tiny_model):
    copy = tmp_path / "tiny"
    shutil.copytree(cached_tiny_model, copy)
    shutil.copy(copy / "model.safetensors", copy / "extra.safetensors")
    with pytest.raises(ModelCacheError, match="not in the manifest: extra.safetensors"):
        verify_cache(copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelCacheError, match="model.safetensors is listed in the manifest but missing"):
        verify_cache(copy)
    with pytest.raises(ModelCacheError, match="manifest.json is missing"):
        verify_cache(tmp_path)


def test_caching_again_keeps_a_valid_cache_and_rebuilds_a_damaged_one(tmp_path, tokenizer_dir):
    spec = ModelSpec(name="x", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32})
    dest = tmp_path / "x"
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp
    (dest / "config.json").write_text("{}")
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    verify_cache(dest)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directory left behind"


def test_a_directory_the_cache_did_not_create_is_refused_and_left_intact(tmp_path, tokenizer_dir):
    spec = ModelSpec(name="mine", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32})
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("my own files")
    (dest / "model.safetensors").write_bytes(b"my weights")
    with pytest.raises(ModelCacheError, match="was not created by the model cache") as raised:
        cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    assert f"path: {dest}" in str(raised.value)
    assert sorted(p.name for p in dest.iterdir()) == ["model.safetensors", "notes.txt"]
    assert (dest / "notes.txt").read_text() == "my own files"
    assert (dest / "model.safetensors").read_bytes() == b"my weights"


def test_a_cache_whose_manifest_snakemake_removed_is_rebuilt(tmp_path, tokenizer_dir):
    # Snakemake deletes a job's outputs (the manifest) before rerunning it; the owner mark remains.
    spec = ModelSpec(name="x", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32})
    dest = tmp_path / "x"
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    (dest / "manifest.json").unlink()
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    verify_cache(dest)


def test_what_a_killed_build_left_behind_is_removed_on_the_next_run(tmp_path, tokenizer_dir):
    spec = ModelSpec(name="x", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32})
    leftover = tmp_path / ".x.partial-abc123" / "model"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half a file")
    other_model = tmp_path / ".x2.partial-def456"  # another model's build is not touched
    other_model.mkdir()
    cache_model(spec, tmp_path / "x", tokenizer_dir=tokenizer_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x2.partial-def456", "x"]


def test_local_source_copies_a_hugging_face_directory(tmp_path, cached_tiny_model):
    hf_dir = tmp_path / "hf"
    shutil.copytree(cached_tiny_model, hf_dir)
    (hf_dir / "manifest.json").unlink()
    manifest = cache_model(ModelSpec(name="local", source="local", path=str(hf_dir)), tmp_path / "cached")
    original = json.loads((cached_tiny_model / "manifest.json").read_text())
    assert manifest["files"]["model.safetensors"] == original["files"]["model.safetensors"]
    assert manifest["spec"]["path"] == str(hf_dir)


class _Payload:
    """Pickled, it asks the loader to create a file: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickled_checkpoint_cannot_run_code_when_loaded(tmp_path, cached_tiny_model):
    hf_dir = tmp_path / "hf"
    shutil.copytree(cached_tiny_model, hf_dir)
    for name in ("manifest.json", "model.safetensors", ".circuit-reuse-cache"):
        (hf_dir / name).unlink()
    marker = tmp_path / "code-ran"
    torch.save({"transformer.wte.weight": _Payload(marker)}, hf_dir / "pytorch_model.bin")
    cache_model(ModelSpec(name="evil", source="local", path=str(hf_dir)), tmp_path / "evil")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|unpickl"):
        load_model(tmp_path / "evil", device="cpu")
    assert not marker.exists(), "loading the checkpoint ran its code"


def test_local_source_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelCacheError, match="needs `path`"):
        cache_model(ModelSpec(name="m", source="local"), tmp_path / "m")
    with pytest.raises(ModelCacheError, match="no config.json"):
        cache_model(ModelSpec(name="m", source="local", path=str(tmp_path)), tmp_path / "m")


def test_random_stand_in_without_tokenizer_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.delenv("CIRCUIT_REUSE_TOKENIZER", raising=False)
    spec = ModelSpec(name="m", source="random", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32})
    with pytest.raises(ModelCacheError, match="CIRCUIT_REUSE_TOKENIZER"):
        cache_model(spec, tmp_path / "m")


def test_hub_source_offline_explains_how_to_use_local_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelCacheError, match="source: local") as raised:
        cache_model(ModelSpec(name="gpt2-small", source="hub", hub_id="gpt2"), tmp_path / "gpt2-small")
    assert "'gpt2'" in str(raised.value)
    assert not (tmp_path / "gpt2-small").exists()


@pytest.mark.parametrize("size", [name for name, record in architectures().items() if record["family"] == "gpt2"])
def test_random_configs_match_the_real_gpt2_configs(size, gpt2_configs_dir):
    # Read through GPT2Config so fields the file leaves out take the same defaults on both sides.
    real = GPT2Config.from_json_file(gpt2_configs_dir / f"{size}.json").to_dict()
    built = random_gpt2_config(size).to_dict()
    for key in [
        "n_layer",
        "n_head",
        "n_embd",
        "n_positions",
        "vocab_size",
        "layer_norm_epsilon",
        "activation_function",
        "n_inner",
        "scale_attn_weights",
        "bos_token_id",
        "eos_token_id",
    ]:
        assert built.get(key) == real.get(key), key


def test_unknown_architecture_is_rejected():
    with pytest.raises(ModelCacheError, match="unknown architecture 'gpt3'; allowed: gpt2, gpt2-large, .*pythia-160m"):
        random_gpt2_config("gpt3")
