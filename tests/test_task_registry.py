"""The task registry: a task defined here, in one module and one config entry, runs through the config,
datasets, baselines and discovery; every built-in task declares what the workflow reads."""

import numpy as np
import pytest
import torch

from circuit_reuse.circuits import select_heads
from circuit_reuse.config import ConfigError, validate_config
from circuit_reuse.datasets import END, DatasetError, make_dataset
from circuit_reuse.datasets.core import DatasetError as CoreDatasetError
from circuit_reuse.datasets.vocab import as_tokenizer, check_single_tokens, encode, last_token, tokenize_pieces
from circuit_reuse.discovery import assemble_circuit, parse_stages, run_stage, stage_receivers
from circuit_reuse.evaluation import evaluate, summarize
from circuit_reuse.head_roles import detector_scores
from circuit_reuse.metrics import LogitDifference, ProbabilityDifference
from circuit_reuse.patching import path_patch_reference
from circuit_reuse.tasks import Task, TaskError, get_task, register, registered_tasks, unregister

WORDS = ("apple", "river", "stone", "cloud", "horse", "table", "window", "garden")


def generate_sequence_recall(n, seed, tokenizer, words=None):
    """A toy task: a list of three words is repeated up to its last word, which the model should recall.

    "apple river stone. apple river" -> " stone"; corrupted: the third word replaced by another.
    """
    tokenizer = as_tokenizer(tokenizer)
    words, _ = check_single_tokens(WORDS if words is None else words, tokenizer, "sequence_recall words")
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        first, second, third, other = (words[k] for k in rng.choice(len(words), 4, replace=False))

        clean, labels = tokenize_pieces(tokenizer, _recall_pieces(first, second, third), f"toy {i}")
        corrupted, _ = tokenize_pieces(tokenizer, _recall_pieces(first, second, other), f"toy {i}")
        records.append(
            {
                "clean_tokens": clean,
                "corrupted_tokens": corrupted,
                "answer": encode(tokenizer, " " + third)[0],
                "wrong": encode(tokenizer, " " + other)[0],
                "positions": {"last": last_token(labels, "last"), END: len(clean) - 1},
                "clean_text": f"{first} {second} {third}. {first} {second}",
            }
        )
    return records, {"task": "sequence_recall", "n_prompts": n, "seed": seed, "dropped": {}}


def _recall_pieces(first, second, last):
    return [(first, None), (" " + second, None), (" " + last, "last"), (".", None), (" " + first, None),
            (" " + second, None)]  # fmt: skip


TOY = Task(
    name="sequence_recall",
    label="Sequence recall",
    generate=generate_sequence_recall,
    metric=LogitDifference(),
    options_schema={"words": {"description": "single-token words", "type": ["array", "null"], "default": None}},
    stages=(
        {"name": "movers", "receivers": "logits", "position": END},
        {"name": "queries", "receivers": {"stage": "movers", "components": ["q"]}, "position": END},
        {"name": "keys", "receivers": {"stage": "queries", "components": ["k", "v"]}, "position": "last"},
    ),
    candidate_roles=("last",),
    roles=("last", END),
)


@pytest.fixture
def toy_task():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_a_task_defined_here_runs_config_datasets_baselines_and_discovery(toy_task, tokenizer_dir, make_model):
    config = validate_config({"models": {"m": {"source": "random"}}, "tasks": {"sequence_recall": {"n_prompts": 6}}})
    options = config["tasks"]["sequence_recall"]
    assert (options["seed"], options["words"]) == (0, None), "defaults come from the task's declaration"
    assert config["discovery"]["stages"]["sequence_recall"] == [dict(s) for s in TOY.stages]

    dataset = make_dataset("sequence_recall", options["n_prompts"], options["seed"], tokenizer_dir)
    assert dataset.meta["metric"] == "logit_diff" and dataset.records[0]["clean_text"].count(".") == 1

    model = make_model(n_layer=3, n_head=2, n_embd=32)
    table = evaluate(model, dataset, batch_size=4, progress=False)
    summary = summarize(table, model="m", n_resamples=100)
    assert list(summary["condition"]) == ["clean", "corrupted"] and (summary["n"] == 6).all()

    specs = parse_stages("sequence_recall", config["discovery"]["stages"]["sequence_recall"])
    grids, chosen = {}, {}
    for spec in specs:
        receivers = stage_receivers(spec, chosen.get(spec.receivers, []))
        grids[spec.name] = run_stage(model, dataset, spec, receivers, batch_size=3, progress=False)
        chosen[spec.name] = select_heads(grids[spec.name], top_percent=34)
        if spec.kind != "key_value":  # the fast path against the reference, on the toy task's own roles
            reference = path_patch_reference(
                model, dataset.clean_tokens, dataset.corrupted_tokens, dataset.answer_tokens, receivers,
                dataset.positions[spec.position], progress=False,
            )  # fmt: skip
            np.testing.assert_allclose(grids[spec.name], reference.numpy(), atol=1e-4, equal_nan=True)
    detectors = detector_scores(model, seq_len=5, n_sequences=2)
    circuit = assemble_circuit("m", model, dataset, specs, grids, {"top_percent": 34}, detectors)
    assert circuit.task == "sequence_recall" and [s.name for s in circuit.stages] == ["movers", "queries", "keys"]
    query_roles = {
        circuit.head_info(h).role for h in circuit.stage("queries").heads if circuit.head_info(h).stage == "queries"
    }
    assert query_roles <= {"inhibition"}, "no question span: the task's query heads are inhibition heads"
    for info in circuit.head_infos:
        if info.stage == "queries":
            assert "candidates_share" in info.evidence, "attention to the registered candidate role was measured"


def test_unknown_tasks_and_double_registration_are_named_errors(toy_task, tokenizer_dir):
    with pytest.raises(DatasetError, match="unknown task 'nope'; known tasks: ioi, colored_objects"):
        make_dataset("nope", 2, 0, tokenizer_dir)
    with pytest.raises(ConfigError, match="tasks: unknown key"):
        validate_config({"models": {"m": {"source": "random"}}, "tasks": {"nope": {}}})
    with pytest.raises(ConfigError, match="discovery.stages: stages for task.* not under tasks: ioi"):
        validate_config(
            {"models": {"m": {"source": "random"}}, "tasks": {"sequence_recall": {}},
             "discovery": {"stages": {"ioi": [{"name": "movers", "receivers": "logits"}]}}}
        )  # fmt: skip
    with pytest.raises(TaskError, match="registered twice"):
        register(Task(**{**TOY.__dict__, "label": "another"}))
    assert issubclass(DatasetError, CoreDatasetError)


def test_every_built_in_task_declares_what_the_workflow_reads(tokenizer_dir):
    tasks = registered_tasks()
    assert list(tasks)[:4] == ["ioi", "colored_objects", "greater_than", "world_capitals"]
    for name, task in tasks.items():
        dataset = make_dataset(name, 3, 0, tokenizer_dir)
        assert dataset.metric == task.metric
        assert set(task.candidate_roles) <= set(dataset.positions), name
        assert set(task.roles) == set(dataset.positions) and set(task.spans) == set(dataset.spans), name
        assert task.ablation_reference is None or task.ablation_reference in dataset.corruptions, name
        for stage in parse_stages(name, task.stages):
            assert stage.position in dataset.positions, (name, stage.name)
        assert get_task(name) is task
    assert [t.name for t in tasks.values() if t.intervention_target] == ["colored_objects"]


def test_greater_than_is_path_patched_with_its_probability_difference(tokenizer_dir, make_model):
    dataset = make_dataset("greater_than", 4, 0, tokenizer_dir)
    model = make_model(n_layer=2, n_head=2, n_embd=32)
    spec = parse_stages("greater_than", get_task("greater_than").stages)[0]
    scores = run_stage(model, dataset, spec, "logits", batch_size=2, progress=False)
    reference = path_patch_reference(
        model, dataset.clean_tokens, dataset.corrupted_tokens, dataset.metric_tokens, "logits", None,
        metric=ProbabilityDifference(), metric_weights=dataset.metric_weights, batch_size=2, progress=False,
    )  # fmt: skip
    # The stage passes the task's metric to path patching. This default-initialised model spreads its
    # probability thinly (about 1/50257 a token), so float32 rounding moves scores by about 1e-3 here; the
    # fast path's exactness for this metric is tested on sharp models in test_patching.py.
    np.testing.assert_allclose(scores, reference.numpy(), atol=2e-3)
    assert torch.equal(dataset.metric_weights[0] > 0, torch.arange(100) > dataset.records[0]["yy"])
