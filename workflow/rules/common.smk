# Where each stage's files live: one place, used by every rules file. All paths are relative to the
# working directory, so a run with --directory elsewhere (the smoke run, the tests) stays self-contained.


def model_dir(model):
    return f"{MODEL_CACHE}/{model}"


def model_manifest(model):
    return f"{model_dir(model)}/manifest.json"


TOKENIZER_DIR = "results/tokenizer"


def dataset_path(task):
    """JSONL, one prompt a line, with `{task}.meta.json` beside it."""
    return f"results/datasets/{task}.jsonl"


def baseline_prompts_path(model, task):
    return f"results/baselines/{model}/{task}.prompts.parquet"


def baseline_summary_path(model, task):
    return f"results/baselines/{model}/{task}.summary.parquet"


def scores_path(model, task, stage):
    """Path-patching score grid: Parquet, one row per head."""
    return f"results/patching/{model}/{task}/{stage}.parquet"


def circuit_path(model, task):
    """The discovered circuit: JSON with every stage's selected heads, scores and roles."""
    return f"results/circuits/{model}/{task}.json"


def overlap_dir(model):
    return f"results/overlap/{model}"


def intervention_dir(model):
    return f"results/intervention/{model}"


TABLES_DIR = "results/tables"
FIGURES_DIR = "figures"
NOTEBOOKS_OUT_DIR = "results/notebooks"


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
