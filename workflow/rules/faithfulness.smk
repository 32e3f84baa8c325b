# Stage: circuit faithfulness, per model and task: every task's circuit (and random circuits like it, and
# the top-k% heads by this task's path-patching importance) kept while every other head is ablated, on this
# task's prompts with its metric. Needs every circuit of the model, for the cross-task matrix.


rule faithfulness:
    input:
        model=lambda wildcards: model_manifest(wildcards.model),
        dataset=lambda wildcards: dataset_path(wildcards.task),
        circuits=lambda wildcards: [circuit_path(wildcards.model, task) for task in TASKS],
        scores=stage_grids,
    output:
        **{name: faithfulness_path("{model}", "{task}", name) for name in FAITHFULNESS_TABLES},
    params:
        faithfulness=config["faithfulness"],
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/faithfulness/{model}.{task}.tsv",
    log:
        "logs/faithfulness/{model}.{task}.log",
    script:
        "../../scripts/faithfulness.py"


ALL_TARGETS.extend(faithfulness_path(m, t, "summary") for m in MODELS for t in TASKS)
