"""The Snakemake workflow's DAG, lint and config checks, run offline through the snakemake CLI."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_of_the_paper_config_lists_the_model_rules(tmp_path):
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(REPO / "config.yaml"),
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "cache_model" in output
    assert "results/models/gpt2-small/manifest.json" in output
    assert "results/models/gpt2-medium/manifest.json" in output


def test_bad_config_fails_before_any_job_with_the_key_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text((REPO / "config.yaml").read_text().replace("source: hub", "source: cloud", 1))
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(config),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models.gpt2-small.source" in output and "allowed values: hub, local, random" in output
    assert "cache_model" not in output


def _dry_run_output(tmp_path, config_text):
    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(config),
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_a_repeated_key_fails_before_any_job(tmp_path):
    smoke = (REPO / "workflow" / "configs" / "smoke.yaml").read_text()
    output = _dry_run_output(tmp_path, smoke + "\nmodels:\n  big: {source: random}\n")
    assert "duplicate key 'models' on line" in output and "cache_model" not in output


def test_an_intervention_head_outside_the_model_fails_before_any_job(tmp_path):
    paper = (REPO / "config.yaml").read_text()
    output = _dry_run_output(tmp_path, paper.replace("[13, 13]]", "[13, 16]]", 1))
    assert "intervention.heads.gpt2-medium.inhibition[2]: head 13.16 is outside gpt2-medium" in output
    assert "cache_model" not in output


# The one lint we accept, on purpose (see the README): rules name no conda environment or container,
# because the whole workflow runs in the project's own virtual environment, installed from pyproject.toml.
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule."}


def test_lint_reports_only_the_accepted_lints(tmp_path):
    # Lint from a copy so that snakemake's bookkeeping never lands in the working tree.
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake("--lint", cwd=tmp_path)
    output = result.stdout + result.stderr
    lints = {line.strip()[2:].rstrip(":") for line in output.splitlines() if line.strip().startswith("* ")}
    assert lints <= ACCEPTED_LINTS, output


def test_smoke_config_caches_its_models_offline(tmp_path, tokenizer_dir):
    env_tokenizer = {"CIRCUIT_REUSE_TOKENIZER": str(tokenizer_dir)}
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "--cores",
            "2",
            "--snakefile",
            str(REPO / "workflow" / "Snakefile"),
            "--configfile",
            str(REPO / "workflow" / "configs" / "smoke.yaml"),
            "--directory",
            str(tmp_path),
            "results/models/tiny-a/manifest.json",
            "results/models/tiny-b/manifest.json",
        ],
        env={**os.environ, **env_tokenizer, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "results/models/tiny-b/model.safetensors").is_file()
    assert "cached tiny-a: 8 files" in (tmp_path / "logs/cache_model/tiny-a.log").read_text()


def _organism_config(tmp_path, training):
    config = yaml.safe_load((REPO / "workflow" / "configs" / "smoke.yaml").read_text())
    config["models"]["organism"] = {
        "source": "trained",
        "overrides": {"n_layer": 2, "n_head": 4, "n_embd": 64},
        "training": training,
    }
    path = tmp_path / "organism.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_organism_is_trained_by_its_own_rule_and_gets_a_training_curve_figure(tmp_path):
    training = {"tasks": {"ioi": 1, "colored_objects": 1}, "steps": 10, "batch_size": 8, "learning_rate": 0.001}
    config = _organism_config(tmp_path, training)
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(config),
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    train_jobs = re.findall(r"rule train_model:\n(?:\s+.*\n)*?\s+output: (.+)", output)
    cache_jobs = re.findall(r"rule cache_model:\n(?:\s+.*\n)*?\s+output: (\S+)", output)
    assert train_jobs == ["results/models/organism/manifest.json, results/models/organism/training_curve.csv"]
    smoke_models = ("tiny-a", "tiny-b", "tiny-llama", "tiny-neox")
    assert sorted(cache_jobs) == [f"results/models/{m}/manifest.json" for m in smoke_models]
    assert "figures/training_curves.png" in output


def test_a_bad_training_recipe_fails_before_any_job_with_the_key_named(tmp_path):
    training = {"tasks": {"ioi": 1, "sums": 1}, "steps": -1, "batch_size": 8, "learning_rate": 0.001}
    config = _organism_config(tmp_path, training)
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--configfile",
        str(config),
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models.organism.training.tasks" in output and "'sums'" in output
    assert "models.organism.training.steps" in output
    assert "train_model" not in output and "cache_model" not in output
