"""The organisms' configuration (workflow/configs/organisms.yaml) through the whole DAG: small GPT-2s
trained by the workflow on the tasks, then every stage on models that do them.

These are properties a working chain must show on a model that does the tasks, asserted as inequalities
whose margins were measured on this configuration (see the README's "What the organisms run finds"): the
organisms do IOI and Colored Objects on the evaluation prompts; discovery finds heads at every stage their
depth allows; each Colored Objects circuit is more faithful than random circuits with its heads per layer;
attribution patching is compared on every stage, and EAP ranks the movers stage's heads as the exact scores
do. Not asserted, for reasons the README gives with the numbers: IOI's faithfulness against random
circuits (the random sets match it), and the intervention moving accuracy more on the discovered heads
than on random ones (both organisms answer 100% of the Colored Objects prompts, so an override can only
break answers, and the discovered heads break fewer than random ones).

The config's checkpoints (organisms part way through training, where Colored Objects is half learned) run
through every rule too. They are asserted to be their organisms at their step, but none of their numbers is
asserted. Those numbers are in the README: the intervention lowers their accuracy, and where a checkpoint
reaches a given accuracy depends on the processor.

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
# Accuracy on the workflow's own (evaluation-seed) prompts, clean and corrupted, against the 95% target:
# measured 99.5-100% on both tasks for both organisms, with mean logit differences of 9.5-13.3 (intervals
# at least 9 away from 0).
ACCURACY_FLOOR = 0.95
LOGIT_DIFF_FLOOR = 5.0
# Colored Objects circuits under mean ablation, against five random circuits with the same heads per layer.
# Training is bitwise reproducible on one machine but not across processors, and the organisms differ:
# on the machine of the README's figures f = 0.51 (organism-a) and 0.87 (organism-b) against random means of
# 0.16 and 0.36 (best 0.23 and 0.63); on a later one (AMD EPYC, the same sha256 in two runs) f = 1.06 and
# 0.39 against means of 0.43 and 0.29 (best 1.00 and 0.63). What holds on both: f at least 0.3 and at least
# 0.05 above the random circuits' mean (the smallest margin measured: 0.099). IOI's circuits are not
# asserted: their inhibition stage holds heads whose path-patching scores are about 1e-6, and random head
# sets of the same layers (half of organism-a's layers) match them (README).
FAITHFULNESS_TASKS = ("colored_objects",)
FAITHFULNESS_FLOOR = 0.3
FAITHFULNESS_MARGIN_OVER_RANDOM_MEAN = 0.05
# EAP against the exact scores at the movers stage (the logits), where the circuits' strongest heads are:
# Spearman's rho over the senders measured 0.979-1.000 for both organisms and tasks, with every exact
# selection recalled (README, "Attribution patching"); at least half of it is asserted.
EAP_MOVERS_SPEARMAN_FLOOR = 0.9


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


def _models(*sources: str) -> list[str]:
    """The config's models of these sources (trained: the organisms; checkpoint: theirs), or all of them."""
    models = yaml.safe_load(CONFIG.read_text())["models"]
    return [name for name, entry in models.items() if not sources or entry["source"] in sources]


def test_every_organism_is_cached_with_its_training_curve_and_figure(run):
    run_dir, _ = run
    for model in _models("trained"):
        manifest = verify_cache(run_dir / f"results/models/{model}")
        assert manifest["spec"]["source"] == "trained"
        curve = pd.read_csv(run_dir / f"results/models/{model}/training_curve.csv")
        assert set(curve["task"]) == set(TASKS)
    assert (run_dir / "figures/training_curves.png").stat().st_size > 1000
    assert len(pd.read_csv(run_dir / "results/tables/training_curves.csv")) == len(_models("trained")) * len(TASKS)


def test_every_checkpoint_is_its_organism_at_its_step(run):
    # The held-out losses at every evaluation up to the checkpoint's step are functions of the weights then:
    # equal curves are the same training, which the checkpoint stopped early.
    run_dir, _ = run
    assert _models("checkpoint")
    for model in _models("checkpoint"):
        spec = verify_cache(run_dir / f"results/models/{model}")["spec"]
        assert spec["source"] == "checkpoint"
        early = pd.read_csv(run_dir / f"results/models/{model}/training_curve.csv")
        whole = pd.read_csv(run_dir / f"results/models/{spec['of']}/training_curve.csv")
        assert early["step"].max() == spec["step"] < whole["step"].max()
        pd.testing.assert_frame_equal(early, whole[whole["step"] <= spec["step"]], check_dtype=False)


def test_every_organism_does_both_tasks_on_the_evaluation_prompts(run):
    run_dir, _ = run
    baselines = read_parquet(run_dir / "results/tables/baselines.parquet").set_index(["model", "task", "condition"])
    for model in _models("trained"):
        for task in TASKS:
            # Corrupted prompts (IOI: S2 -> IO; Colored Objects: another object asked) answer the corrupted
            # question: the organism follows the corruption, so the metric flips sign.
            for condition in ("clean", "corrupted"):
                assert baselines.loc[(model, task, condition), "accuracy"] >= ACCURACY_FLOOR, (model, task, condition)
            assert baselines.loc[(model, task, "clean"), "metric_ci_low"] > LOGIT_DIFF_FLOOR, (model, task)
            assert baselines.loc[(model, task, "corrupted"), "metric_ci_high"] < -LOGIT_DIFF_FLOOR, (model, task)


def test_each_colored_objects_circuit_is_more_faithful_than_random_circuits_of_its_layers(run):
    run_dir, _ = run
    for model in _models("trained"):
        for task in FAITHFULNESS_TASKS:
            summary = read_parquet(run_dir / f"results/faithfulness/{model}/{task}.summary.parquet")
            own_task = summary[(summary["ablation"] == "mean") & (summary["circuit_task"] == task)]
            circuit = own_task.loc[own_task["kind"] == "circuit", "f"].item()
            random = own_task.loc[own_task["kind"] == "random", "f"]
            assert len(random) >= 5
            assert circuit >= FAITHFULNESS_FLOOR, (model, task, circuit)
            margin = circuit - random.mean()
            assert margin >= FAITHFULNESS_MARGIN_OVER_RANDOM_MEAN, (model, task, circuit, random.mean())


def test_attribution_patching_is_compared_on_every_stage_and_ranks_the_movers_as_exact_does(run):
    run_dir, _ = run
    for model in _models():
        summary = read_parquet(run_dir / f"results/attribution/{model}/summary.parquet")
        times = read_parquet(run_dir / f"results/attribution/{model}/times.parquet")
        for task in TASKS:
            stages = [stage.name for stage in load_circuit(run_dir / f"results/circuits/{model}/{task}.json").stages]
            rows = summary[summary["task"] == task]
            assert sorted(zip(rows["stage"], rows["method"], strict=True)) == sorted(
                (stage, method) for stage in stages for method in ("eap", "eap_ig")
            )
            timed = times[(times["task"] == task) & (times["n_prompts"] > 0)]
            assert set(timed["method"]) == {"exact", "eap", "eap_ig"} and (timed["wall_s"] >= 0).all()
            if model not in _models("trained"):
                continue  # checkpoints: measured in the README, not asserted
            movers = rows[(rows["stage"] == "movers") & (rows["method"] == "eap")].iloc[0]
            assert movers["spearman"] >= EAP_MOVERS_SPEARMAN_FLOOR, (model, task, movers["spearman"])
            assert movers["recall"] >= 0.5, (model, task, movers["only_exact"])


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
