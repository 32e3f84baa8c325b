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
    log:
        "logs/cache_model/{model}.log",
    script:
        "../../scripts/cache_model.py"


ALL_TARGETS.extend(model_manifest(m) for m in MODELS)
