"""The smoke configuration through the whole DAG, offline, from a copy of the workflow in a temporary
directory: every target is built, a second run does nothing, figures are byte-stable, editing one notebook
reruns only its figure, a new selection threshold reruns only what depends on it, and the report holds
every figure.

One module-scoped run (a few minutes on two cores) serves every test here; the checks after it are dry runs
or reruns of the notebook rules only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import yaml

from circuit_reuse.config import load_config
from circuit_reuse.datasets import load_dataset
from circuit_reuse.examples import example_drift
from circuit_reuse.io import read_json, read_parquet, read_parquet_provenance
from circuit_reuse.workflow import job_times

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = load_config(REPO / "workflow" / "configs" / "smoke.yaml")
MODELS = tuple(SMOKE_CONFIG["models"])
TASKS = tuple(SMOKE_CONFIG["tasks"])
STAGES = {task: len(stages) for task, stages in SMOKE_CONFIG["discovery"]["stages"].items()}
NOTEBOOK_RULES = (
    "notebook_baselines",
    "notebook_head_grids",
    "notebook_overlap",
    "notebook_overlap_matrix",
    "notebook_threshold_sensitivity",
    "notebook_intervention",
    "notebook_movers",
    "notebook_paper_comparison",
    "notebook_faithfulness",
    "notebook_mechanisms",
    "notebook_attribution",
)
FIGURES = (
    ["baselines", "threshold_sensitivity", "intervention_accuracy", "paper_comparison", "overlap_matrix"]
    + [f"head_grids/{m}.{t}" for m in MODELS for t in TASKS]
    + [f"overlap/{m}" for m in MODELS]
    + [f"movers/{m}" for m in MODELS]
    + [f"faithfulness/{m}" for m in MODELS]
    + [f"mechanisms/{m}.{kind}" for m in MODELS for kind in ("attention", "ov")]
    + [f"attribution/{m}" for m in MODELS]
)
TABLES = ["baselines", "threshold_sensitivity", "intervention_accuracy", "paper_comparison", "overlap_matrix"] + [
    f"{family}/{m}" for family in ("overlap", "movers", "faithfulness", "mechanisms", "attribution") for m in MODELS
]


class Smoke:
    """A copy of the workflow (workflow/, scripts/, notebooks/) and a run directory beside it."""

    def __init__(self, root: Path, tokenizer_dir: Path):
        self.repo = root / "repo"
        self.run_dir = root / "run"
        for part in ("workflow", "scripts", "notebooks"):
            shutil.copytree(REPO / part, self.repo / part, ignore=shutil.ignore_patterns("example_output"))
        self.config = self.repo / "workflow" / "configs" / "smoke.yaml"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "CIRCUIT_REUSE_TOKENIZER": str(tokenizer_dir)}

    def snakemake(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
        command = [
            sys.executable, "-m", "snakemake", *args, "--cores", "2",
            "--snakefile", str(self.repo / "workflow" / "Snakefile"),
            "--configfile", str(config or self.config), "--directory", str(self.run_dir),
        ]  # fmt: skip
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=1800)

    def planned_jobs(self, config: Path | None = None) -> Counter:
        """Rule -> job count of a dry run."""
        result = self.snakemake("-n", config=config)
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        return Counter(re.findall(r"^(?:local)?rule (\w+):", output, flags=re.M))

    def figure_hashes(self) -> dict[str, str]:
        figures = self.run_dir / "figures"
        return {
            str(path.relative_to(figures)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(figures.rglob("*"))
            if path.suffix in {".pdf", ".png"}
        }


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tokenizer_dir) -> Smoke:
    smoke = Smoke(tmp_path_factory.mktemp("end_to_end"), tokenizer_dir)
    result = smoke.snakemake()
    assert result.returncode == 0, result.stderr[-5000:]
    return smoke


def test_every_target_is_built(smoke):
    run = smoke.run_dir
    for stem in FIGURES:
        for suffix in (".pdf", ".png"):
            assert (run / "figures" / f"{stem}{suffix}").stat().st_size > 1000, stem
    for stem in TABLES:
        assert (run / "results/tables" / f"{stem}.csv").is_file(), stem
        assert "\\begin{table}" in (run / "results/tables" / f"{stem}.tex").read_text(), stem
    executed = sorted(path.name for path in (run / "results/notebooks").glob("*.ipynb"))
    n_head_grids = len(MODELS) * len(TASKS)
    # One each of baselines, threshold sensitivity, intervention, paper comparison and overlap matrix; per model
    # overlap, movers, faithfulness, mechanisms and attribution; per model and task the head grids.
    assert len(executed) == 5 + n_head_grids + 5 * len(MODELS), executed
    n_pairs = len(TASKS) * (len(TASKS) - 1) // 2
    for model in MODELS:
        summary = read_parquet(run / f"results/overlap/{model}/summary.parquet")
        assert len(summary) == n_pairs and summary["iou"].between(0, 1).all()
        pairs = [(a, b) for i, a in enumerate(TASKS) for b in TASKS[i + 1 :]]
        assert list(zip(summary["task_a"], summary["task_b"], strict=True)) == pairs
        assert (run / f"results/intervention/{model}/accuracy.parquet").is_file()
        for task in TASKS:
            assert (run / f"results/circuits/{model}/{task}.json").is_file()


def test_faithfulness_covers_every_circuit_on_every_task(smoke):
    for model in MODELS:
        for task in TASKS:
            summary = read_parquet(smoke.run_dir / f"results/faithfulness/{model}/{task}.summary.parquet")
            own = summary[summary["kind"] == "circuit"]
            assert set(own["circuit_task"]) == set(TASKS) and set(own["ablation"]) == {"mean", "resample"}
            assert (summary.loc[summary["kind"] == "random", "repeat"].max()) == 1  # the smoke config's 2 repeats
            curve = read_parquet(smoke.run_dir / f"results/faithfulness/{model}/{task}.curve.parquet")
            kept_all = curve[curve["percent"] == 100]
            assert (kept_all["f"].sub(1).abs() < 1e-4).all()  # every head kept: the model itself
            prompts = read_parquet(smoke.run_dir / f"results/faithfulness/{model}/{task}.prompts.parquet")
            assert set(prompts["prompt"]) == set(range(24))


def test_datasets_and_baselines_carry_their_config_and_tokenizer(smoke):
    results, logs = smoke.run_dir / "results", smoke.run_dir / "logs"
    fingerprint = read_json(results / "tokenizer/manifest.json")["tokenizer"]["fingerprint"]
    for task in TASKS:
        seed = SMOKE_CONFIG["tasks"][task]["seed"]
        dataset = load_dataset(results / f"datasets/{task}.jsonl")
        assert len(dataset) == 24 and dataset.meta["seed"] == seed and dataset.meta["config"]["n_prompts"] == 24
        assert dataset.meta["tokenizer"]["fingerprint"] == fingerprint
        assert f"{task}: 24 prompts, seed {seed}" in (logs / f"make_dataset/{task}.log").read_text()
        for model in MODELS:
            prompts = read_parquet(results / f"baselines/{model}/{task}.prompts.parquet")
            assert len(prompts) == 48 and set(prompts["condition"]) == {"clean", "corrupted"}
            provenance = read_parquet_provenance(results / f"baselines/{model}/{task}.summary.parquet")
            assert provenance["config"]["dataset"]["seed"] == seed and provenance["versions"]["torch"]
            log = (logs / f"evaluate_baseline/{model}/{task}.log").read_text()
            assert "batch" in log and "metric_mean" in log
    table = read_parquet(results / "tables/baselines.parquet")
    assert len(table) == 2 * len(MODELS) * len(TASKS) and set(table["model"]) == set(MODELS)
    assert (table["n"] == 24).all() and table["accuracy"].between(0, 1).all()
    assert (table["metric_ci_low"] <= table["metric_mean"]).all()


def test_a_second_run_does_nothing(smoke):
    assert smoke.planned_jobs() == Counter()


def test_figures_are_byte_identical_when_the_notebooks_rerun(smoke):
    before = smoke.figure_hashes()
    assert len(before) == 2 * len(FIGURES)
    result = smoke.snakemake("--forcerun", *NOTEBOOK_RULES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "notebook_movers" in result.stdout + result.stderr  # the rules did run again
    assert smoke.figure_hashes() == before


def test_editing_one_notebook_reruns_only_its_figure(smoke):
    path = smoke.repo / "notebooks" / "04_threshold_sensitivity.ipynb"
    original, stat = path.read_bytes(), path.stat()
    notebook = nbformat.reads(original.decode(), as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell("A reader's note."))
    nbformat.write(notebook, path)
    try:
        assert smoke.planned_jobs() == Counter({"notebook_threshold_sensitivity": 1, "all": 1})
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert smoke.planned_jobs() == Counter()


def test_a_new_selection_threshold_reruns_only_what_depends_on_it(smoke, tmp_path):
    config = yaml.safe_load(smoke.config.read_text())
    config.setdefault("discovery", {})["selection"] = {"top_percent": 25.0}
    changed = tmp_path / "threshold.yaml"
    changed.write_text(yaml.safe_dump(config))
    planned = smoke.planned_jobs(config=changed)
    # Stages after the first read the previous stage's selection; the logits stages, the datasets, the
    # baselines and the head detectors do not.
    later_stages = len(MODELS) * sum(count - 1 for count in STAGES.values())  # every stage but the logits one
    assert planned["patch_stage"] == later_stages
    assert planned["assemble_circuit"] == len(MODELS) * len(TASKS)
    assert planned["overlap"] == len(MODELS) and planned["intervention"] == len(MODELS)
    assert planned["faithfulness"] == len(MODELS) * len(TASKS)
    assert planned["compare_attribution"] == len(MODELS)
    for rule in ("notebook_head_grids", "notebook_overlap", "notebook_movers"):
        assert planned[rule] in (len(MODELS), len(MODELS) * len(TASKS)), rule  # per model, or per model and task
    untouched = {
        "cache_model", "cache_tokenizer", "check_model", "make_dataset", "evaluate_baseline",
        "baseline_table", "head_detectors", "notebook_baselines",
    }  # fmt: skip
    assert not untouched & set(planned), planned


def test_the_report_holds_every_figure_with_its_caption(smoke, tmp_path):
    report = tmp_path / "report.zip"
    result = smoke.snakemake("--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    names = "\n".join(zipfile.ZipFile(report).namelist())
    for stem in FIGURES:
        assert f"{Path(stem).name}.png" in names, stem


def test_every_job_records_its_wall_time_and_memory(smoke, tmp_path):
    times = job_times(smoke.run_dir)
    expected = {
        "cache_tokenizer", "cache_model", "check_model", "make_dataset", "evaluate_baseline", "baseline_table",
        "patch_stage", "head_detectors", "assemble_circuit", "overlap", "intervention", "faithfulness",
        "mechanisms", "compare_attribution", *NOTEBOOK_RULES,
    }  # fmt: skip
    assert set(times["rule"]) == expected
    assert (times["seconds"] > 0).all()
    # Every job split its time (scripts/benchmark_workflow.py sums the split): it started, and models
    # were loaded by exactly the rules that run one, notebook kernels by the notebook rules.
    assert times["process"].notna().all() and (times["start-up"] > 0).all()
    loads = set(times.loc[times["model load"] > 0, "rule"])
    assert loads == {"check_model", "evaluate_baseline", "patch_stage", "head_detectors", "assemble_circuit",
                     "intervention", "faithfulness", "mechanisms", "compare_attribution"}  # fmt: skip
    assert set(times.loc[times["notebook kernel"] > 0, "rule"]) == set(NOTEBOOK_RULES)
    assert set(times.loc[times["rule"] == "notebook_movers", "job"]) == set(MODELS)
    with pytest.raises(FileNotFoundError, match="no benchmark files"):
        job_times(tmp_path)


def test_the_committed_example_tables_match_a_fresh_run(smoke):
    drift = example_drift(REPO / "notebooks" / "example_data", smoke.run_dir / "results")
    assert drift == [], "regenerate them with `make examples`:\n" + "\n".join(drift)


@pytest.mark.parametrize(
    "damaged, damage, consumer",
    [
        ("results/datasets/ioi.jsonl", "edit", "results/tables/baselines.parquet"),  # one answer id changed by hand
        (
            "results/patching/tiny-a/colored_objects/movers.parquet",
            "truncate",
            "results/circuits/tiny-a/colored_objects.json",
        ),
    ],
)
def test_a_damaged_input_stops_its_consumer_with_the_rebuild_command(smoke, damaged, damage, consumer):
    # Runs last: the failed jobs' outputs are gone afterwards.
    path = smoke.run_dir / damaged
    if damage == "edit":
        lines = path.read_text().splitlines(keepends=True)
        record = json.loads(lines[0])
        record["answer"] += 1
        path.write_text(json.dumps(record) + "\n" + "".join(lines[1:]))
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = smoke.snakemake(consumer)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{damaged} does not match the sha256 its job recorded in {damaged}.sha256" in output
    command = (
        f"snakemake --snakefile {smoke.repo / 'workflow' / 'Snakefile'} --directory {smoke.run_dir} "
        f"--configfile {smoke.config} --cores all --force {damaged}"
    )
    assert command in output
    # the first half of the command rebuilds the file, with its digest
    rebuilt = smoke.snakemake("--force", damaged)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (smoke.run_dir / f"{damaged}.sha256").read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
