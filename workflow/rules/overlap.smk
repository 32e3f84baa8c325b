# Stage: overlap of every pair of tasks' circuits in each model, with its chance baseline and threshold
# sensitivity. Runs when the config has at least two tasks.


rule overlap:
    input:
        unpack(overlap_inputs),
    output:
        summary=f"{overlap_dir('{model}')}/summary.parquet",
        heads=f"{overlap_dir('{model}')}/heads.parquet",
        sensitivity=f"{overlap_dir('{model}')}/sensitivity.parquet",
    params:
        overlap=config["overlap"],
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/overlap/{model}.tsv",
    log:
        "logs/overlap/{model}.log",
    script:
        "../../scripts/overlap.py"


if OVERLAP_RUNS:
    ALL_TARGETS.extend(f"{overlap_dir(model)}/summary.parquet" for model in MODELS)
