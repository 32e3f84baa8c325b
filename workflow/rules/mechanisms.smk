# Stage: the paper's mechanism readouts, per model: for every head of every task's circuit, its attention
# from END to each role of the task's prompts (on the intervention's target task also under each of the
# intervention's conditions, with the edited heads read too), and its OV circuit projected onto the task's
# answer tokens (copy and negative copy). Tables under results/mechanisms/{model}/ (circuit_reuse.mechanisms).
# One clean forward pass per task plus one per intervention condition: far less than the intervention.

from circuit_reuse.mechanisms import MECHANISM_TABLES


rule mechanisms:
    input:
        model=lambda wildcards: model_manifest(wildcards.model),
        datasets=[dataset_path(task) for task in TASKS],
        circuits=lambda wildcards: [circuit_path(wildcards.model, task) for task in TASKS],
    output:
        **{name: f"{mechanisms_dir('{model}')}/{name}.parquet" for name in MECHANISM_TABLES},
    params:
        tasks=TASKS,
        target=INTERVENTION_TARGET if INTERVENTION_RUNS else None,
        intervention=lambda wildcards: model_section(config["intervention"], wildcards.model),
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/mechanisms/{model}.tsv",
    log:
        "logs/mechanisms/{model}.log",
    script:
        "../../scripts/mechanisms.py"
