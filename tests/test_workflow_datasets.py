"""The datasets and baseline rules in the DAG, and tokenizer caching (the smoke run end to end is in
test_workflow_end_to_end.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuit_reuse.config import load_config
from circuit_reuse.datasets import DatasetError
from circuit_reuse.datasets.vocab import as_tokenizer, cache_tokenizer, tokenizer_fingerprint
from circuit_reuse.io import read_json

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]


def snakemake(*args, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*SNAKEMAKE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_lists_datasets_and_baselines_for_every_model_and_task(tmp_path):
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"))
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for rule in ("cache_tokenizer", "make_dataset", "evaluate_baseline", "baseline_table"):
        assert f"rule {rule}:" in output
    assert "results/tokenizer/manifest.json" in output
    for task in load_config(REPO / "config.yaml")["tasks"]:
        assert f"results/datasets/{task}.jsonl" in output
        for model in ("gpt2-small", "gpt2-medium"):
            assert f"results/baselines/{model}/{task}.prompts.parquet" in output
            assert f"results/baselines/{model}/{task}.summary.parquet" in output
    assert "results/tables/baselines.parquet" in output


def test_cache_tokenizer_copies_the_files_with_a_fingerprint(tmp_path, tokenizer_dir):
    manifest = cache_tokenizer(tmp_path / "tokenizer", tokenizer_dir)
    assert manifest["source"] == "local" and "vocab.json" in manifest["files"]
    assert read_json(tmp_path / "tokenizer/manifest.json") == manifest
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(as_tokenizer(tokenizer_dir))
    assert manifest["tokenizer"]["vocab_size"] == 50257


def test_cache_tokenizer_offline_without_a_source_explains_what_to_set(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.delenv("CIRCUIT_REUSE_TOKENIZER", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DatasetError, match=r"(?s)could not download the tokenizer: 'gpt2'.*CIRCUIT_REUSE_TOKENIZER"):
        cache_tokenizer(tmp_path / "tokenizer")
    assert not (tmp_path / "tokenizer").exists(), "nothing half-written is left behind"
