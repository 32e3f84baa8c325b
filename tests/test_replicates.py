"""Dataset-seed replicates: derived configs, headline numbers, their variation, the driver and the scale config."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from circuit_reuse.config import load_config
from circuit_reuse.datasets import load_dataset
from circuit_reuse.io import read_parquet, write_parquet
from circuit_reuse.replicates import headline_numbers, replicate_config, replicate_dir, seed_variation

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "workflow" / "configs" / "smoke.yaml"


def test_replicate_config_shifts_every_task_seed_and_shares_the_model_cache(tmp_path):
    config = load_config(SMOKE)
    derived = replicate_config(config, 3, tmp_path / "models")
    assert derived["tasks"]["ioi"]["seed"] == 3 and derived["tasks"]["colored_objects"]["seed"] == 45
    assert derived["model_cache"] == str((tmp_path / "models").resolve())
    assert "replicates" not in derived
    assert config["tasks"]["ioi"]["seed"] == 0 and "replicates" in config  # the input is left alone
    assert replicate_dir(tmp_path, 3) == tmp_path / "seed-offset-3"
    with pytest.raises(ValueError, match="offsets are >= 0"):
        replicate_config(config, -1, tmp_path)


def _fake_results(root: Path, iou: float, accuracy: float, with_intervention: bool = True) -> Path:
    """A results directory with the three tables headline_numbers reads, holding chosen numbers."""
    results = root / "results"
    baselines = pd.DataFrame(
        {
            "model": ["m", "m"], "task": ["ioi", "ioi"], "condition": ["clean", "corrupted"],
            "accuracy": [accuracy, 0.0], "metric_mean": [2 * accuracy, -1.0],
        }
    )  # fmt: skip
    write_parquet(results / "tables/baselines.parquet", baselines)
    overlap = pd.DataFrame(
        {
            "model": ["m"],
            "task_a": ["ioi"],
            "task_b": ["colored_objects"],
            "iou": [iou],
            "shared": [4],
            "share_of_a_in_b": [0.5],
            "share_of_b_in_a": [0.8],
            "p_value": [0.01],
        }
    )
    write_parquet(results / "overlap/m/summary.parquet", overlap)
    if with_intervention:
        accuracy_table = pd.DataFrame(
            {
                "model": ["m", "m", "m"], "condition": ["none", "both", "skipped_one"],
                "status": ["ran", "ran", "skipped"], "accuracy": [0.5, 0.75, float("nan")],
                "delta_accuracy": [0.0, 0.25, float("nan")],
            }
        )  # fmt: skip
        write_parquet(results / "intervention/m/accuracy.parquet", accuracy_table)
    return results


def test_headline_numbers_read_clean_baselines_overlap_and_conditions_that_ran(tmp_path):
    numbers = headline_numbers(_fake_results(tmp_path, iou=0.6, accuracy=0.9)).set_index(["family", "metric"])
    assert numbers.loc[("baseline", "ioi.accuracy"), "value"] == 0.9  # clean only
    assert numbers.loc[("baseline", "ioi.metric_mean"), "value"] == 1.8
    assert numbers.loc[("overlap", "ioi-colored_objects.iou"), "value"] == 0.6
    assert numbers.loc[("overlap", "ioi-colored_objects.shared"), "value"] == 4
    assert numbers.loc[("intervention", "both.delta_accuracy"), "value"] == 0.25
    assert not any(metric.startswith("skipped_one") for metric in numbers.index.get_level_values("metric"))
    assert len(numbers) == 2 + 5 + 4
    with pytest.raises(FileNotFoundError, match="no results directory"):
        headline_numbers(tmp_path / "missing")


def test_seed_variation_summarises_each_number_across_replicates(tmp_path):
    runs = {
        0: _fake_results(tmp_path / "a", iou=0.5, accuracy=0.8),
        1: _fake_results(tmp_path / "b", iou=0.7, accuracy=0.6),
        4: _fake_results(tmp_path / "c", iou=0.9, accuracy=0.7, with_intervention=False),
    }
    table = seed_variation(runs).set_index(["family", "metric"])
    iou = table.loc[("overlap", "ioi-colored_objects.iou")]
    assert iou["n"] == 3 and iou["mean"] == pytest.approx(0.7) and iou["std"] == pytest.approx(0.2)
    assert (iou["min"], iou["max"]) == (0.5, 0.9)
    assert (iou["offset_0"], iou["offset_1"], iou["offset_4"]) == (0.5, 0.7, 0.9)
    both = table.loc[("intervention", "both.accuracy")]
    assert both["n"] == 2 and pd.isna(both["offset_4"])  # a replicate without the table is left out
    single = seed_variation({2: runs[0]}).set_index(["family", "metric"]).loc[("overlap", "ioi-colored_objects.iou")]
    assert single["n"] == 1 and pd.isna(single["std"])
    with pytest.raises(ValueError, match="no replicates"):
        seed_variation({})


def test_scale_config_is_valid_and_plans_every_model(tmp_path):
    config = load_config(REPO / "workflow" / "configs" / "scale.yaml")
    assert set(config["models"]) == {"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl"}
    assert config["replicates"]["seed_offsets"] == [0, 1, 2, 3, 4]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "workflow" / "Snakefile")]
        + ["--configfile", str(REPO / "workflow" / "configs" / "scale.yaml"), "--directory", str(tmp_path)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for model in config["models"]:
        assert f"results/intervention/{model}/accuracy.parquet" in result.stdout


def test_driver_runs_each_replicate_with_its_seeds_and_one_model_cache(tmp_path, tokenizer_dir):
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_replicates.py"), "--configfile", str(SMOKE), "--out", str(out)]
        + ["--offsets", "0", "1", "--", "--cores", "2", "results/tables/baselines.parquet"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CIRCUIT_REUSE_TOKENIZER": str(tokenizer_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seeds_line = "[replicate 2/2] seed offset 1 (ioi 1, colored_objects 43, greater_than 1, world_capitals 1)"
    assert seeds_line in result.stdout
    for offset, seeds in ((0, (0, 42)), (1, (1, 43))):
        run = replicate_dir(out, offset)
        assert load_dataset(run / "results/datasets/ioi.jsonl").meta["seed"] == seeds[0]
        assert load_dataset(run / "results/datasets/colored_objects.jsonl").meta["seed"] == seeds[1]
        assert not (run / "results/models").exists()  # weights live in the one shared cache
    assert sorted(p.name for p in (out / "models").iterdir()) == ["tiny-a", "tiny-b", "tiny-llama", "tiny-neox"]
    table = read_parquet(out / "seed_variation.parquet")
    assert set(table["family"]) == {"baseline"} and (table["n"] == 2).all()
    assert {"offset_0", "offset_1"} <= set(table.columns)
    assert (out / "seed_variation.csv").read_text().startswith("model,family,metric,n,mean,std,min,max")
