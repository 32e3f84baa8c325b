# Stage: the attention-pattern intervention on Colored Objects, per model: the override conditions (the
# paper's repair), random-head controls, the content gatherers' block and the mover heads' readouts.
# Runtime is sized for a CPU node: a forward pass over 25 prompts of a GPT-2-medium-sized model took about
# 7 s on 2 CPU cores here, and the paper's setup is 45 passes over 1000 prompts (10 control repeats).
# Runs when the config has both tasks: `auto` heads come from the IOI and Colored Objects circuits, the
# prompts from Colored Objects. Both circuits are inputs even where the config lists a model's heads, since
# the movers always come from the Colored Objects circuit and the discovery stage builds both anyway.

from circuit_reuse.intervention import InterventionError, InterventionSettings, model_section

INTERVENTION_TABLES = (
    "head_sets",
    "per_prompt",
    "accuracy",
    "controls",
    "controls_summary",
    "movers",
    "movers_spearman",
)
INTERVENTION_RUNS = {"ioi", "colored_objects"} <= set(TASKS)

try:  # the checks the schema cannot make, before any job runs
    InterventionSettings.from_config(config["intervention"])
    _unknown = sorted(set(config["intervention"]["heads"]) - set(MODELS))
    if _unknown:
        raise InterventionError(
            f"intervention.heads: no model named {', '.join(map(repr, _unknown))}; models: {', '.join(MODELS)}"
        )
except InterventionError as error:
    raise WorkflowError(f"invalid config:\n  {error}") from None


rule intervention:
    input:
        model=lambda wildcards: model_manifest(wildcards.model),
        dataset=dataset_path("colored_objects"),
        ioi_circuit=lambda wildcards: circuit_path(wildcards.model, "ioi"),
        co_circuit=lambda wildcards: circuit_path(wildcards.model, "colored_objects"),
        mover_scores=lambda wildcards: scores_path(
            wildcards.model, "colored_objects", config["intervention"]["mover_stage"]
        ),
    output:
        **{name: f"{intervention_dir('{model}')}/{name}.parquet" for name in INTERVENTION_TABLES},
    params:
        intervention=lambda wildcards: model_section(config["intervention"], wildcards.model),
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/intervention/{model}.tsv",
    log:
        "logs/intervention/{model}.log",
    script:
        "../../scripts/run_intervention.py"


if INTERVENTION_RUNS:
    ALL_TARGETS.extend(f"{intervention_dir(model)}/accuracy.parquet" for model in MODELS)
