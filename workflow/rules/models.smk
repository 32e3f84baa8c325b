# Stage: model caching. Each model spec resolves to a Hugging Face directory with a manifest; every later
# job loads from that directory only, so compute nodes never need the Hub.


rule cache_model:
    wildcard_constraints:
        model=one_of(FETCHED_MODELS),
    output:
        manifest=model_manifest("{model}"),
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
        tokenizer=config["tokenizer"],
    # Downloading needs internet, which cluster compute nodes often lack: run it where snakemake runs.
    localrule: True
    threads: job_threads("cache")
    resources:
        **job_resources("cache"),
    benchmark:
        "benchmarks/cache_model/{model}.tsv",
    log:
        "logs/cache_model/{model}.log",
    script:
        "../../scripts/cache_model.py"


# An organism: a small GPT-2 trained on the tasks' own generators (circuit_reuse/training.py), on the CPU
# threads of a model job, into a temporary directory renamed into place when it is done. Its training
# prompts use the workflow's cached tokenizer and the tasks' configured vocabularies. A checkpoint of an
# organism is its own job, the organism's training run up to the checkpoint's step.
rule train_model:
    wildcard_constraints:
        model=one_of(TRAINED_MODELS),
    input:
        tokenizer=TOKENIZER_MANIFEST,
    output:
        manifest=model_manifest("{model}"),
        curve=training_curve_path("{model}"),
    params:
        spec=lambda wildcards: organism_entry(config["models"], wildcards.model),
        tasks=config["tasks"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/train_model/{model}.tsv",
    log:
        "logs/train_model/{model}.log",
    script:
        "../../scripts/train_model.py"


# The first job of each model on a compute node: load the cache the way every model job does (Hub offline,
# on the job's device) and run one prompt, so that a cache the nodes cannot see or load fails in seconds.
rule check_model:
    input:
        manifest=model_manifest("{model}"),
    output:
        check=model_check_path("{model}"),
    params:
        device=config["device"],
    threads: job_threads("model")
    resources:
        **job_resources("model"),
    benchmark:
        "benchmarks/check_model/{model}.tsv",
    log:
        "logs/check_model/{model}.log",
    script:
        "../../scripts/check_model.py"


ALL_TARGETS.extend(model_manifest(m) for m in MODELS)
ALL_TARGETS.extend(model_check_path(m) for m in MODELS)
ALL_TARGETS.extend(training_curve_path(m) for m in TRAINED_MODELS)
