# Where each stage's files live: one place, used by every rules file. All paths are relative to the
# working directory, so a run with --directory elsewhere (the smoke run, the tests) stays self-contained.


def model_dir(model):
    return f"{MODEL_CACHE}/{model}"


def model_manifest(model):
    return f"{model_dir(model)}/manifest.json"


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
