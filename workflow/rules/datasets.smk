# Stage: task datasets. config -> tokenizer -> one dataset per task. Datasets depend on the tokenizer
# alone (not on any model); each evaluation checks that its model's tokenizer encodes them the same way.


rule cache_tokenizer:
    output:
        manifest=TOKENIZER_MANIFEST,
    params:
        tokenizer=config["tokenizer"],
    # May download the tokenizer files (2 MB) from the Hub: run it where snakemake runs.
    localrule: True
    threads: job_threads("cache")
    resources:
        **job_resources("cache"),
    benchmark:
        "benchmarks/cache_tokenizer.tsv",
    log:
        "logs/cache_tokenizer.log",
    script:
        "../../scripts/cache_tokenizer.py"


rule make_dataset:
    input:
        tokenizer=TOKENIZER_MANIFEST,
    output:
        dataset=dataset_path("{task}"),
        meta=dataset_meta_path("{task}"),
    params:
        options=lambda wildcards: config["tasks"][wildcards.task],
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/make_dataset/{task}.tsv",
    log:
        "logs/make_dataset/{task}.log",
    script:
        "../../scripts/make_dataset.py"


ALL_TARGETS.extend(dataset_path(t) for t in TASKS)
