# Stage: circuit discovery. One path-patching job per model x task x stage (a stage whose inputs did not
# change is not recomputed), head-role detectors per model, and the circuit assembled per model x task.


rule patch_stage:
    input:
        unpack(stage_inputs),
    output:
        scores=scores_path("{model}", "{task}", "{stage}"),
        timing=scoring_time_path("{model}", "{task}", "{stage}"),
    params:
        stage=lambda wildcards: asdict(STAGE_SPECS[wildcards.task][wildcards.stage]),
        selection=stage_selection,
        receivers_floor=receivers_floor,
        n_prompts=config["discovery"]["n_prompts"],
        batch_size=config["discovery"]["batch_size"],
        freeze_mlps=config["discovery"]["freeze_mlps"],
        averaging=config["discovery"]["averaging"],
        averaging_batch_size=config["discovery"]["averaging_batch_size"],
        device=config["device"],
    wildcard_constraints:
        stage="[A-Za-z0-9_]+",
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/patch_stage/{model}/{task}/{stage}.tsv",
    log:
        "logs/patch_stage/{model}/{task}/{stage}.log",
    script:
        "../../scripts/patch_stage.py"


rule head_detectors:
    input:
        model=lambda wildcards: model_manifest(wildcards.model),
    output:
        detectors=detectors_path("{model}"),
    params:
        detectors=config["discovery"]["detectors"],
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/head_detectors/{model}.tsv",
    log:
        "logs/head_detectors/{model}.log",
    script:
        "../../scripts/head_detectors.py"


rule assemble_circuit:
    input:
        model=lambda wildcards: model_manifest(wildcards.model),
        dataset=lambda wildcards: dataset_path(wildcards.task),
        detectors=lambda wildcards: detectors_path(wildcards.model),
        grids=stage_grids,
    output:
        circuit=circuit_path("{model}", "{task}"),
    params:
        stages=lambda wildcards: [asdict(spec) for spec in STAGES[wildcards.task]],
        selection=config["discovery"]["selection"],
        n_prompts=config["discovery"]["n_prompts"],
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/assemble_circuit/{model}/{task}.tsv",
    log:
        "logs/assemble_circuit/{model}/{task}.log",
    script:
        "../../scripts/assemble_circuit.py"


ALL_TARGETS.extend(circuit_path(model, task) for model in MODELS for task in TASKS)
# The score grids are targets too, so that one deleted (say, after it was found damaged) is rebuilt even
# though the circuit that read it is still there.
ALL_TARGETS.extend(scores_path(m, t, spec.name) for m in MODELS for t in TASKS for spec in STAGES[t])
