# Stage: the analysis notebooks. Papermill runs each notebook under notebooks/ with its input tables and
# output files as parameters; it writes the figures (PDF and PNG, byte-stable) to figures/, the tables (CSV
# and LaTeX) to results/tables/ and keeps the executed notebook under results/notebooks/. A notebook is an
# input of its rule, so editing one reruns only what it draws.

from circuit_reuse.tasks import get_task


rule notebook_baselines:
    input:
        notebook=notebook_source("01_baselines"),
        baselines=baseline_table_path(),
    output:
        notebook=executed_notebook("01_baselines"),
        **figure_outputs("baselines", "baselines", "1. Baselines"),
        **table_outputs("baselines"),
    params:
        parameters=lambda wildcards, input, output: {"baselines": input.baselines, **stems(output)},
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/notebook_baselines.tsv",
    log:
        "logs/notebook_baselines.log",
    script:
        "../../scripts/run_notebook.py"


rule notebook_head_grids:
    input:
        notebook=notebook_source("02_head_grids"),
        scores=stage_grids,
        circuit=lambda wildcards: circuit_path(wildcards.model, wildcards.task),
    output:
        notebook=executed_notebook("02_head_grids", ".{model}.{task}"),
        **figure_outputs("head_grids/{model}.{task}", "head_grids", "2. Path-patching head grids", "{model}"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "task": wildcards.task,
            "scores": list(input.scores),
            "circuit": input.circuit,
            **stems(output),
        },
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/notebook_head_grids/{model}.{task}.tsv",
    log:
        "logs/notebook_head_grids/{model}.{task}.log",
    script:
        "../../scripts/run_notebook.py"


ALL_TARGETS.extend(f"{FIGURES_DIR}/head_grids/{m}.{t}.png" for m in MODELS for t in TASKS)
ALL_TARGETS.extend([f"{FIGURES_DIR}/baselines.png", f"{TABLES_DIR}/baselines.csv"])


if OVERLAP_RUNS:
    # The per-model overlap figure draws the first pair of tasks in config order (the paper's IOI and
    # Colored Objects in config.yaml); the matrix figure shows every pair.
    FIGURE_PAIR = TASKS[:2]

    rule notebook_overlap:
        input:
            notebook=notebook_source("03_overlap"),
            circuits=lambda wildcards: [circuit_path(wildcards.model, task) for task in FIGURE_PAIR],
            grids_a=lambda wildcards: task_grids(wildcards.model, FIGURE_PAIR[0]),
            grids_b=lambda wildcards: task_grids(wildcards.model, FIGURE_PAIR[1]),
            heads=f"{overlap_dir('{model}')}/heads.parquet",
            summary=f"{overlap_dir('{model}')}/summary.parquet",
        output:
            notebook=executed_notebook("03_overlap", ".{model}"),
            **figure_outputs("overlap/{model}", "overlap", "3. Overlap of two tasks' circuits", "{model}"),
            **table_outputs("overlap/{model}"),
        params:
            parameters=lambda wildcards, input, output: {
                "model": wildcards.model,
                "tasks": list(FIGURE_PAIR),
                "scores_a": list(input.grids_a),
                "scores_b": list(input.grids_b),
                "circuits": list(input.circuits),
                "heads": input.heads,
                "summary": input.summary,
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_overlap/{model}.tsv",
        log:
            "logs/notebook_overlap/{model}.log",
        script:
            "../../scripts/run_notebook.py"

    rule notebook_threshold_sensitivity:
        input:
            notebook=notebook_source("04_threshold_sensitivity"),
            sensitivity=[f"{overlap_dir(m)}/sensitivity.parquet" for m in MODELS],
            summary=[f"{overlap_dir(m)}/summary.parquet" for m in MODELS],
        output:
            notebook=executed_notebook("04_threshold_sensitivity"),
            **figure_outputs("threshold_sensitivity", "threshold_sensitivity", "4. Threshold sensitivity"),
            **table_outputs("threshold_sensitivity"),
        params:
            parameters=lambda wildcards, input, output: {
                "sensitivity": list(input.sensitivity),
                "summary": list(input.summary),
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_threshold_sensitivity.tsv",
        log:
            "logs/notebook_threshold_sensitivity.log",
        script:
            "../../scripts/run_notebook.py"

    rule notebook_overlap_matrix:
        input:
            notebook=notebook_source("10_overlap_matrix"),
            summary=[f"{overlap_dir(m)}/summary.parquet" for m in MODELS],
        output:
            notebook=executed_notebook("10_overlap_matrix"),
            **figure_outputs("overlap_matrix", "overlap_matrix", "3. Overlap of every pair of tasks"),
            **table_outputs("overlap_matrix"),
        params:
            parameters=lambda wildcards, input, output: {
                "summary": list(input.summary),
                "labels": {task: get_task(task).label for task in TASKS},
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_overlap_matrix.tsv",
        log:
            "logs/notebook_overlap_matrix.log",
        script:
            "../../scripts/run_notebook.py"

    ALL_TARGETS.extend(f"{FIGURES_DIR}/overlap/{m}.png" for m in MODELS)
    ALL_TARGETS.append(f"{FIGURES_DIR}/overlap_matrix.png")
    ALL_TARGETS.append(f"{FIGURES_DIR}/threshold_sensitivity.png")


if INTERVENTION_RUNS:

    rule notebook_intervention:
        input:
            notebook=notebook_source("05_intervention"),
            accuracy=[f"{intervention_dir(m)}/accuracy.parquet" for m in MODELS],
            controls=[f"{intervention_dir(m)}/controls.parquet" for m in MODELS],
            controls_summary=[f"{intervention_dir(m)}/controls_summary.parquet" for m in MODELS],
        output:
            notebook=executed_notebook("05_intervention"),
            **figure_outputs("intervention_accuracy", "intervention", "5. Intervention"),
            **table_outputs("intervention_accuracy"),
        params:
            parameters=lambda wildcards, input, output: {
                "accuracy": list(input.accuracy),
                "controls": list(input.controls),
                "controls_summary": list(input.controls_summary),
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_intervention.tsv",
        log:
            "logs/notebook_intervention.log",
        script:
            "../../scripts/run_notebook.py"

    rule notebook_movers:
        input:
            notebook=notebook_source("06_movers"),
            movers=f"{intervention_dir('{model}')}/movers.parquet",
            spearman=f"{intervention_dir('{model}')}/movers_spearman.parquet",
        output:
            notebook=executed_notebook("06_movers", ".{model}"),
            **figure_outputs("movers/{model}", "movers", "6. Mover heads under the intervention", "{model}"),
            **table_outputs("movers/{model}"),
        params:
            parameters=lambda wildcards, input, output: {
                "model": wildcards.model,
                "movers": input.movers,
                "spearman": input.spearman,
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_movers/{model}.tsv",
        log:
            "logs/notebook_movers/{model}.log",
        script:
            "../../scripts/run_notebook.py"

    ALL_TARGETS.append(f"{FIGURES_DIR}/intervention_accuracy.png")
    ALL_TARGETS.extend(f"{FIGURES_DIR}/movers/{m}.png" for m in MODELS)


rule notebook_mechanisms:
    input:
        notebook=notebook_source("11_mechanisms"),
        attention=f"{mechanisms_dir('{model}')}/attention.parquet",
        copy_scores=f"{mechanisms_dir('{model}')}/copy_scores.parquet",
        ov=f"{mechanisms_dir('{model}')}/ov.parquet",
    output:
        notebook=executed_notebook("11_mechanisms", ".{model}"),
        **figure_outputs("mechanisms/{model}.attention", "mechanisms_attention", "11. Mechanisms", "{model}"),
        **{
            f"ov_{kind}": path
            for kind, path in figure_outputs("mechanisms/{model}.ov", "mechanisms_ov", "11. Mechanisms", "{model}").items()
        },
        **table_outputs("mechanisms/{model}"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "attention": input.attention,
            "copy_scores": input.copy_scores,
            "ov": input.ov,
            "labels": {task: get_task(task).label for task in TASKS},
            "figure_ov": output.ov_png[: -len(".png")],
            **stems(output),
        },
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/notebook_mechanisms/{model}.tsv",
    log:
        "logs/notebook_mechanisms/{model}.log",
    script:
        "../../scripts/run_notebook.py"


ALL_TARGETS.extend(f"{FIGURES_DIR}/mechanisms/{m}.{kind}.png" for m in MODELS for kind in ("attention", "ov"))


rule notebook_paper_comparison:
    input:
        notebook=notebook_source("07_paper_comparison"),
        baselines=baseline_table_path(),
        overlap=[f"{overlap_dir(m)}/summary.parquet" for m in MODELS] if OVERLAP_RUNS else [],
        intervention=[f"{intervention_dir(m)}/accuracy.parquet" for m in MODELS] if INTERVENTION_RUNS else [],
        controls=[f"{intervention_dir(m)}/controls_summary.parquet" for m in MODELS] if INTERVENTION_RUNS else [],
        spearman=[f"{intervention_dir(m)}/movers_spearman.parquet" for m in MODELS] if INTERVENTION_RUNS else [],
        movers=[f"{intervention_dir(m)}/movers.parquet" for m in MODELS] if INTERVENTION_RUNS else [],
        faithfulness=[faithfulness_path(m, t, "summary") for m in MODELS for t in TASKS],
    output:
        notebook=executed_notebook("07_paper_comparison"),
        **figure_outputs("paper_comparison", "paper_comparison", "7. This run beside the paper"),
        **table_outputs("paper_comparison"),
    params:
        parameters=lambda wildcards, input, output: {
            "baselines": input.baselines,
            "overlap": list(input.overlap),
            "intervention": list(input.intervention),
            "controls": list(input.controls),
            "spearman": list(input.spearman),
            "movers": list(input.movers),
            "faithfulness": list(input.faithfulness),
            "models": {name: dict(spec) for name, spec in config["models"].items()},
            **stems(output),
        },
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/notebook_paper_comparison.tsv",
    log:
        "logs/notebook_paper_comparison.log",
    script:
        "../../scripts/run_notebook.py"


ALL_TARGETS.append(f"{FIGURES_DIR}/paper_comparison.png")


rule notebook_faithfulness:
    input:
        notebook=notebook_source("08_faithfulness"),
        summary=lambda wildcards: [faithfulness_path(wildcards.model, t, "summary") for t in TASKS],
        curve=lambda wildcards: [faithfulness_path(wildcards.model, t, "curve") for t in TASKS],
        prompts=lambda wildcards: [faithfulness_path(wildcards.model, t, "prompts") for t in TASKS],
    output:
        notebook=executed_notebook("08_faithfulness", ".{model}"),
        **figure_outputs("faithfulness/{model}", "faithfulness", "8. Circuit faithfulness", "{model}"),
        **table_outputs("faithfulness/{model}"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "summary": list(input.summary),
            "curve": list(input.curve),
            "prompts": list(input.prompts),
            **stems(output),
        },
    threads: job_threads("light")
    resources:
        **job_resources("light"),
    benchmark:
        "benchmarks/notebook_faithfulness/{model}.tsv",
    log:
        "logs/notebook_faithfulness/{model}.log",
    script:
        "../../scripts/run_notebook.py"


ALL_TARGETS.extend(f"{FIGURES_DIR}/faithfulness/{m}.png" for m in MODELS)


# A checkpoint's curve is the start of its organism's: the figure draws the organisms.
if ORGANISMS:

    rule notebook_training_curves:
        input:
            notebook=notebook_source("09_training_curves"),
            curves=[training_curve_path(m) for m in ORGANISMS],
        output:
            notebook=executed_notebook("09_training_curves"),
            **figure_outputs("training_curves", "training_curves", "0. Model organisms"),
            **table_outputs("training_curves"),
        params:
            parameters=lambda wildcards, input, output: {
                "models": list(ORGANISMS),
                "curves": list(input.curves),
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_training_curves.tsv",
        log:
            "logs/notebook_training_curves.log",
        script:
            "../../scripts/run_notebook.py"

    ALL_TARGETS.append(f"{FIGURES_DIR}/training_curves.png")


if ATTRIBUTION_RUNS:

    rule notebook_attribution:
        input:
            notebook=notebook_source("12_attribution"),
            scores=f"{attribution_dir('{model}')}/scores.parquet",
            summary=f"{attribution_dir('{model}')}/summary.parquet",
            times=f"{attribution_dir('{model}')}/times.parquet",
        output:
            notebook=executed_notebook("12_attribution", ".{model}"),
            **figure_outputs("attribution/{model}", "attribution", "12. Attribution patching", "{model}"),
            **table_outputs("attribution/{model}"),
            # Wall times, which differ between runs: the SLURM test checks them for presence only.
            times_csv=f"{TABLES_DIR}/attribution_times/{{model}}.csv",
            times_tex=f"{TABLES_DIR}/attribution_times/{{model}}.tex",
        params:
            parameters=lambda wildcards, input, output: {
                "model": wildcards.model,
                "scores": [input.scores],
                "summary": [input.summary],
                "times": [input.times],
                "times_table": output.times_csv[: -len(".csv")],
                **stems(output),
            },
        threads: job_threads("light")
        resources:
            **job_resources("light"),
        benchmark:
            "benchmarks/notebook_attribution/{model}.tsv",
        log:
            "logs/notebook_attribution/{model}.log",
        script:
            "../../scripts/run_notebook.py"

    ALL_TARGETS.extend(f"{FIGURES_DIR}/attribution/{m}.png" for m in MODELS)
