# What every rules file shares: where each stage's files live, the discovery stages parsed from config,
# and the input functions. All paths are relative to the working directory, so a run with --directory
# elsewhere (the smoke run, the tests) stays self-contained.

import os
import re
import sys
from dataclasses import asdict

from circuit_reuse.discovery import StageError, parse_stages
from circuit_reuse.training import organism_entry


def model_dir(model):
    return f"{MODEL_CACHE}/{model}"


def model_manifest(model):
    return f"{model_dir(model)}/manifest.json"


def training_curve_path(model):
    """An organism's loss and held-out accuracy per task over training steps (CSV), cached beside its weights."""
    return f"{model_dir(model)}/training_curve.csv"


# Organisms (source: trained) and their checkpoints (source: checkpoint, the same training stopped early)
# are trained by a compute job; every other model is fetched by cache_model.
ORGANISMS = [m for m in MODELS if config["models"][m]["source"] == "trained"]
TRAINED_MODELS = [m for m in MODELS if config["models"][m]["source"] in ("trained", "checkpoint")]
FETCHED_MODELS = [m for m in MODELS if m not in TRAINED_MODELS]


def one_of(names):
    """A wildcard pattern matching exactly these names; nothing at all when there are none."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


TOKENIZER_DIR = "results/tokenizer"
# The tokenizer files sit beside it; its sha256s and vocabulary fingerprint say which tokenizer it was.
TOKENIZER_MANIFEST = f"{TOKENIZER_DIR}/manifest.json"


def dataset_path(task):
    """JSONL, one prompt a line, with `{task}.meta.json` beside it."""
    return f"results/datasets/{task}.jsonl"


def dataset_meta_path(task):
    return f"results/datasets/{task}.meta.json"


def baseline_prompts_path(model, task):
    return f"results/baselines/{model}/{task}.prompts.parquet"


def baseline_summary_path(model, task):
    return f"results/baselines/{model}/{task}.summary.parquet"


def baseline_table_path():
    """Every model's and task's baseline summary in one Parquet table."""
    return f"{TABLES_DIR}/baselines.parquet"


def scores_path(model, task, stage):
    """Path-patching score grid: Parquet, one row per head."""
    return f"results/patching/{model}/{task}/{stage}.parquet"


def scoring_time_path(model, task, stage):
    """JSON: how long a stage's scoring took, by which method on which device (a wall time, so not in results/)."""
    return f"benchmarks/scoring/{model}/{task}/{stage}.json"


def attribution_dir(model):
    """Every stage scored by each compared method and set against the exact scores."""
    return f"results/attribution/{model}"


def circuit_path(model, task):
    """The discovered circuit: JSON with every stage's selected heads, scores and roles."""
    return f"results/circuits/{model}/{task}.json"


def overlap_dir(model):
    return f"results/overlap/{model}"


def intervention_dir(model):
    return f"results/intervention/{model}"


def mechanisms_dir(model):
    """Each circuit head's attention from END to every role, and its OV circuit on the answer tokens."""
    return f"results/mechanisms/{model}"


FAITHFULNESS_TABLES = ("prompts", "summary", "curve")


def faithfulness_path(model, task, table):
    """Parquet: `prompts` (per prompt), `summary` (per circuit and ablation) or `curve` (top-k% circuits)."""
    return f"results/faithfulness/{model}/{task}.{table}.parquet"



def detectors_path(model):
    """Previous-token, duplicate-token and induction scores of every head: Parquet, one row per head."""
    return f"results/heads/{model}/detectors.parquet"


TABLES_DIR = "results/tables"
FIGURES_DIR = "figures"
NOTEBOOKS_OUT_DIR = "results/notebooks"


# Circuit discovery: each task's stages, checked once when the workflow is read.

try:  # validation gave every task its stages (the config's, else its registered default)
    STAGES = {
        task: parse_stages(
            task,
            config["discovery"]["stages"][task],
            config["discovery"]["senders"],
            config["discovery"]["method"],
            config["discovery"]["ig_steps"],
            config["discovery"]["min_relative_score"],
        )
        for task in TASKS
    }
except StageError as error:
    raise WorkflowError(f"invalid config:\n  {error}") from None
STAGE_SPECS = {task: {spec.name: spec for spec in specs} for task, specs in STAGES.items()}


def stage_inputs(wildcards):
    spec = STAGE_SPECS[wildcards.task][wildcards.stage]
    inputs = {"model": model_manifest(wildcards.model), "dataset": dataset_path(wildcards.task)}
    if spec.kind != "logits":
        inputs["previous"] = scores_path(wildcards.model, wildcards.task, spec.receivers)
    return inputs


def stage_selection(wildcards):
    # Only stages whose receivers come from an earlier selection depend on the selection rule, so
    # changing the threshold leaves the logits stages alone.
    spec = STAGE_SPECS[wildcards.task][wildcards.stage]
    return None if spec.kind == "logits" else config["discovery"]["selection"]


def receivers_floor(wildcards):
    # A stage's receivers are its earlier stage's heads above that stage's score floor.
    spec = STAGE_SPECS[wildcards.task][wildcards.stage]
    return None if spec.kind == "logits" else STAGE_SPECS[wildcards.task][spec.receivers].min_relative_score


def stage_grids(wildcards):
    return task_grids(wildcards.model, wildcards.task)


# Overlap compares every pair of the config's tasks in each model; with a single task there is no pair.

OVERLAP_RUNS = len(TASKS) >= 2
if not OVERLAP_RUNS:
    print(f"note: one task ({TASKS[0]}): no pair of circuits to compare, so no overlap is built", file=sys.stderr)


def task_grids(model, task):
    return [scores_path(model, task, spec.name) for spec in STAGES[task]]


def overlap_inputs(wildcards):
    """Every task's circuit, and each task's stage grids as `grids_{task}`."""
    inputs = {"circuits": [circuit_path(wildcards.model, task) for task in TASKS]}
    inputs.update({f"grids_{task}": task_grids(wildcards.model, task) for task in TASKS})
    return inputs


# Attribution patching against the exact scores: runs when the compared methods hold exact and an approximation.

COMPARED_METHODS = list(config["attribution"]["methods"])
ATTRIBUTION_RUNS = "exact" in COMPARED_METHODS and len(COMPARED_METHODS) >= 2
if not ATTRIBUTION_RUNS:
    print(
        f"note: attribution.methods {COMPARED_METHODS} does not hold both exact and an approximation, so "
        "no attribution comparison is built",
        file=sys.stderr,
    )


def attribution_inputs(wildcards):
    """The model; each task's dataset, stage grids and stage timings as `dataset_{task}`, `grids_{task}`, `timings_{task}`."""
    inputs = {"model": model_manifest(wildcards.model)}
    for task in TASKS:
        inputs[f"dataset_{task}"] = dataset_path(task)
        inputs[f"grids_{task}"] = task_grids(wildcards.model, task)
        inputs[f"timings_{task}"] = [scoring_time_path(wildcards.model, task, spec.name) for spec in STAGES[task]]
    return inputs


def model_check_path(model):
    """What a compute job saw when it loaded the cached model: device, shape, a short forward pass."""
    return f"results/model_checks/{model}.json"


# Resources. Every rule names its job class from the config's `resources` section (light, model, cache)
# with the same two lines, so that one config key or one profile entry changes what its jobs ask for:
#
#     threads: job_threads("model")
#     resources:
#         **job_resources("model"),
#
# On SLURM, threads become --cpus-per-task and the resources --mem, --time, --gpus and -p; a profile's
# set-threads and set-resources override one rule (workflow/profiles/slurm/config.yaml).


def job_threads(job_class):
    return circuit_reuse.workflow.job_threads(config, job_class)


def job_resources(job_class):
    return circuit_reuse.workflow.job_resources(config, job_class)


# The analysis notebooks: where each one lives, where its executed copy and its outputs go.

def notebook_source(name):
    return os.path.normpath(f"{workflow.basedir}/../notebooks/{name}.ipynb")


def executed_notebook(name, suffix=""):
    return f"{NOTEBOOKS_OUT_DIR}/{name}{suffix}.ipynb"


def figure_outputs(stem, caption, category, subcategory=None):
    """The PDF and PNG of one figure; the PNG goes into the HTML report with its caption."""
    labels = {"figure": os.path.basename(stem)}
    return {
        "pdf": f"{FIGURES_DIR}/{stem}.pdf",
        "png": report(
            f"{FIGURES_DIR}/{stem}.png",
            caption=f"../report/{caption}.rst",
            category=category,
            subcategory=subcategory,
            labels=labels,
        ),
    }


def table_outputs(stem):
    return {"csv": f"{TABLES_DIR}/{stem}.csv", "tex": f"{TABLES_DIR}/{stem}.tex"}


def stems(output):
    """The figure and table stems a notebook writes to, from its rule's outputs."""
    result = {}
    if hasattr(output, "png"):
        result["figure"] = output.png[: -len(".png")]
    if hasattr(output, "csv"):
        result["table"] = output.csv[: -len(".csv")]
    return result
