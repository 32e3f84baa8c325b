# Stage: attribution patching against exact path patching. One job per model scores every stage of every task
# by each method of `attribution.methods` on the receivers the workflow's own selection gave it (a stage's own
# method is read from its scores, not recomputed) and compares each approximation with the exact scores.
# Runs when the methods include exact and at least one approximation (ATTRIBUTION_RUNS, in common.smk).


rule compare_attribution:
    input:
        unpack(attribution_inputs),
    output:
        scores=f"{attribution_dir('{model}')}/scores.parquet",
        summary=f"{attribution_dir('{model}')}/summary.parquet",
        # Wall times differ between runs; the SLURM test compares every other output byte for byte.
        times=f"{attribution_dir('{model}')}/times.parquet",
    params:
        tasks=TASKS,
        stages={task: [asdict(spec) for spec in STAGES[task]] for task in TASKS},
        methods=COMPARED_METHODS,
        ig_steps=config["discovery"]["ig_steps"],
        selection=config["discovery"]["selection"],
        n_prompts=config["discovery"]["n_prompts"],
        batch_size=config["discovery"]["batch_size"],
        freeze_mlps=config["discovery"]["freeze_mlps"],
        averaging=config["discovery"]["averaging"],
        averaging_batch_size=config["discovery"]["averaging_batch_size"],
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/compare_attribution/{model}.tsv",
    log:
        "logs/compare_attribution/{model}.log",
    script:
        "../../scripts/compare_attribution.py"


if ATTRIBUTION_RUNS:
    ALL_TARGETS.extend(f"{attribution_dir(model)}/summary.parquet" for model in MODELS)
