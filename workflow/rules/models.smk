# Stage: model caching. Each model spec resolves to a Hugging Face directory with a manifest; every later
# job loads from that directory only, so compute nodes never need the Hub.


rule cache_model:
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
