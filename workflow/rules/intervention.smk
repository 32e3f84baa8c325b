# Stage: the attention-pattern intervention (the paper's, on Colored Objects), per model: the override
# conditions (the paper's repair), random-head controls, the content gatherers' block and the mover heads'
# readouts.
# Runtime is sized for a CPU node: a forward pass over 25 prompts of a GPT-2-medium-sized model took about
# 7 s on 2 CPU cores here, and the paper's setup is 45 passes over 1000 prompts (10 control repeats).
# Which task's prompts it runs on and which task's circuit supplies each head set come from the task
# registry (circuit_reuse.tasks: `intervention_target`, `intervention_heads`). It runs when a configured task
# is the target and the task supplying the movers is configured; a head set whose task is not configured
# is left empty, and the head_sets table says so. The circuits are inputs even where the config lists a
# model's heads, since the movers always come from a circuit and discovery builds them anyway.

from circuit_reuse.intervention import InterventionError, InterventionSettings, model_section
from circuit_reuse.tasks import intervention_plan, registered_tasks

INTERVENTION_TABLES = (
    "head_sets",
    "per_prompt",
    "accuracy",
    "controls",
    "controls_summary",
    "movers",
    "movers_spearman",
)
INTERVENTION_TARGET, INTERVENTION_SOURCES = intervention_plan(TASKS)
INTERVENTION_MOVERS_TASK = INTERVENTION_SOURCES.get("movers", (None,))[0]
INTERVENTION_CIRCUIT_TASKS = list(dict.fromkeys(task for task, _, _ in INTERVENTION_SOURCES.values()))
INTERVENTION_RUNS = INTERVENTION_TARGET is not None and INTERVENTION_MOVERS_TASK is not None
if not INTERVENTION_RUNS:
    _targets = [t.name for t in registered_tasks().values() if t.intervention_target]
    print(
        f"note: no intervention: it runs on the prompts of {' or '.join(_targets)}, with that task's movers, "
        f"and the config's tasks are {', '.join(TASKS)}",
        file=sys.stderr,
    )
else:
    _missing = sorted(set(intervention_plan(registered_tasks())[1]) - set(INTERVENTION_SOURCES))
    if _missing:
        print(f"note: the intervention's head sets {', '.join(_missing)} come from tasks not configured: they stay empty", file=sys.stderr)

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
        dataset=dataset_path(INTERVENTION_TARGET),
        circuits=lambda wildcards: [circuit_path(wildcards.model, task) for task in INTERVENTION_CIRCUIT_TASKS],
        mover_scores=lambda wildcards: scores_path(
            wildcards.model, INTERVENTION_MOVERS_TASK, config["intervention"]["mover_stage"]
        ),
    output:
        **{name: f"{intervention_dir('{model}')}/{name}.parquet" for name in INTERVENTION_TABLES},
    params:
        intervention=lambda wildcards: model_section(config["intervention"], wildcards.model),
        circuit_tasks=INTERVENTION_CIRCUIT_TASKS,
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
