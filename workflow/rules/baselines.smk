# Stage: baseline evaluation. How well each model does each task, clean and corrupted, before any
# patching: per-prompt results for error analysis, a summary per model x task, and one table of all.


rule evaluate_baseline:
    input:
        model=model_manifest("{model}"),
        dataset=dataset_path("{task}"),
        meta=dataset_meta_path("{task}"),
    output:
        prompts=baseline_prompts_path("{model}", "{task}"),
        summary=baseline_summary_path("{model}", "{task}"),
    params:
        device=config["device"],
        evaluation=config["evaluation"],
        model_spec=lambda wildcards: config["models"][wildcards.model],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/evaluate_baseline/{model}/{task}.tsv",
    log:
        "logs/evaluate_baseline/{model}/{task}.log",
    script:
        "../../scripts/evaluate_baseline.py"


rule baseline_table:
    input:
        summaries=[baseline_summary_path(m, t) for m in MODELS for t in TASKS],
    output:
        table=baseline_table_path(),
    localrule: True
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/baseline_table.tsv",
    log:
        "logs/baseline_table.log",
    script:
        "../../scripts/baseline_table.py"


ALL_TARGETS.extend(baseline_summary_path(m, t) for m in MODELS for t in TASKS)
ALL_TARGETS.append(baseline_table_path())
