"""The `trained` model source: config validation, the recipe's arithmetic, the losses against Hugging Face's own
forward pass, determinism, resuming a cached organism and an interrupted training.

Every training here is a few steps of a 1-layer model: these tests check the machinery; what a fully trained
organism can do is checked on the organisms' CI run (tests/test_organisms.py).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from circuit_reuse import training
from circuit_reuse.config import ConfigError, load_schema, validate_config
from circuit_reuse.datasets import make_dataset
from circuit_reuse.models import ModelSpec, cache_model, load_model, random_gpt2_config, verify_cache
from circuit_reuse.training import (
    CURVE_COLUMNS,
    TRAINING_SEED_BASE,
    TrainingError,
    TrainingRecipe,
    learning_rate,
    organism_spec,
    training_seed,
)

TINY_SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 32}
TINY_TRAINING = {
    "tasks": {"ioi": 1, "colored_objects": 1},
    "steps": 4,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "warmup_steps": 2,
    "prompts_per_task": 6,
    "eval_every": 2,
    "eval_prompts": 3,
}
TASKS = {"ioi": {"n_prompts": 10, "seed": 0}, "colored_objects": {"n_prompts": 10, "seed": 42}}


def _config(**model):
    entry = {"source": "trained", "overrides": dict(TINY_SHAPE), "training": copy.deepcopy(TINY_TRAINING), **model}
    return {"models": {"org": entry}, "tasks": copy.deepcopy(TASKS)}


def _error(config) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    return str(raised.value)


def _spec(seed: int = 0, **training_changes) -> ModelSpec:
    entry = {
        "source": "trained",
        "overrides": TINY_SHAPE,
        "seed": seed,
        "training": {**TINY_TRAINING, **training_changes},
    }
    return organism_spec("org", entry, TASKS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- config validation: named errors before any job runs ------------------------------------------------


def test_a_trained_model_config_is_valid_and_gets_the_recipe_defaults():
    config = validate_config(_config())
    recipe = config["models"]["org"]["training"]
    assert recipe["lm_loss_weight"] == 1.0 and recipe["eval_every"] == 2 and recipe["weight_decay"] == 0.01


def test_unknown_training_task_is_named():
    config = _config()
    config["models"]["org"]["training"]["tasks"]["no_such_task"] = 1
    message = _error(config)
    assert "models.org.training.tasks" in message and "no_such_task" in message


def test_head_count_that_does_not_divide_the_width_is_named():
    message = _error(_config(overrides={"n_layer": 2, "n_head": 3, "n_embd": 64}))
    assert "models.org.overrides.n_head: 3 heads do not divide n_embd = 64" in message


def test_a_random_stand_in_with_an_indivisible_shape_is_refused_too():
    config = _config()
    config["models"]["org"] = {"source": "random", "overrides": {"n_head": 5, "n_embd": 64}}
    assert "models.org.overrides.n_head: 5 heads do not divide n_embd = 64" in _error(config)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("tasks", {"ioi": -1.0, "colored_objects": 1}, "models.org.training.tasks.ioi"),
        ("steps", -5, "models.org.training.steps"),
        ("steps", 0, "models.org.training.steps"),
        ("batch_size", 0, "models.org.training.batch_size"),
        ("learning_rate", 0, "models.org.training.learning_rate"),
        ("warmup_steps", -1, "models.org.training.warmup_steps"),
        ("init_std", 0, "models.org.training.init_std"),
        ("skeleton_weight", -1, "models.org.training.skeleton_weight"),
        ("skeleton_batch_size", 0, "models.org.training.skeleton_batch_size"),
    ],
)
def test_negative_weights_and_counts_are_named(key, value, named):
    config = _config()
    config["models"]["org"]["training"][key] = value
    assert named in _error(config)


def test_a_skeleton_curriculum_for_tasks_that_declare_no_skeleton_is_named_before_any_job():
    config = _config()
    config["models"]["org"]["training"].update({"tasks": {"greater_than": 1}, "skeleton_weight": 1.0})
    config["tasks"] = {"greater_than": {"n_prompts": 10, "seed": 0}}
    message = _error(config)
    assert "models.org.training.skeleton_weight: none of greater_than declares a skeleton" in message
    assert "colored_objects" in message and "ioi" in message  # the tasks that do


def test_a_batch_that_starves_a_task_is_named_before_any_job():
    config = _config()
    config["models"]["org"]["training"]["batch_size"] = 1
    assert "models.org.training.batch_size: 1 prompts per step leave none for" in _error(config)


def test_training_belongs_to_trained_models_only():
    config = _config()
    del config["models"]["org"]["training"]
    assert "models.org: 'training' is a required property" in _error(config)
    config = _config(source="random")
    assert "models.org" in _error(config)


def _with_checkpoint(**checkpoint):
    config = _config()
    config["models"]["org-step3"] = {"source": "checkpoint", "of": "org", "step": 3, **checkpoint}
    return config


def test_a_checkpoint_takes_its_organisms_shape_and_recipe():
    config = validate_config(_with_checkpoint())
    assert config["models"]["org-step3"] == {"source": "checkpoint", "of": "org", "step": 3}
    entry = training.organism_entry(config["models"], "org-step3")
    assert entry == {**config["models"]["org"], "source": "checkpoint", "of": "org", "step": 3}
    spec = organism_spec("org-step3", entry, TASKS)
    assert (spec.source, spec.of, spec.step, spec.overrides) == ("checkpoint", "org", 3, TINY_SHAPE)
    assert spec.training["steps"] == 4  # the organism's schedule, which the checkpoint stops part way through
    config["intervention"] = {"heads": {"org-step3": {"inhibition": [[1, 0]]}}}  # organism-a has 1 layer
    assert "intervention.heads.org-step3.inhibition[0]: head 1.0 is outside org-step3 (1 layers" in _error(config)


@pytest.mark.parametrize(
    ("checkpoint", "named"),
    [
        ({"of": "nothing"}, "models.org-step3.of: 'nothing' is not an organism of this config"),
        ({"step": 4}, "models.org-step3.step: 4 is not below org's 4 training steps"),
        ({"step": 0}, "models.org-step3.step: 0 is less than the minimum of 1"),
        ({"seed": 1}, "models.org-step3.seed: does not apply to source 'checkpoint'"),
    ],
)
def test_a_checkpoint_of_no_organism_or_past_its_training_is_named(checkpoint, named):
    assert named in _error(_with_checkpoint(**checkpoint))


def test_a_checkpoint_needs_its_organism_and_step():
    config = _config()
    config["models"]["org-step3"] = {"source": "checkpoint", "of": "org"}
    assert "models.org-step3: 'step' is a required property" in _error(config)


def test_task_seeds_stay_below_the_training_seeds():
    config = _config()
    config["tasks"]["ioi"]["seed"] = TRAINING_SEED_BASE
    assert "tasks.ioi.seed" in _error(config)
    config["tasks"]["ioi"]["seed"] = TRAINING_SEED_BASE - 1
    validate_config(config)


def test_the_recipe_and_the_schema_know_the_same_keys():
    schema_keys = set(load_schema()["$defs"]["training"]["properties"])
    recipe_keys = set(TrainingRecipe.__dataclass_fields__) - {"seed", "task_options"}
    assert schema_keys == recipe_keys


def test_the_recipe_refuses_what_the_schema_refuses_when_used_without_it():
    with pytest.raises(TrainingError, match="training.tasks: unknown task"):
        TrainingRecipe.from_config({**TINY_TRAINING, "tasks": {"no_such_task": 1}})
    with pytest.raises(TrainingError, match="training.tasks.ioi: the weight must be >= 0"):
        TrainingRecipe.from_config({**TINY_TRAINING, "tasks": {"ioi": -1}})
    with pytest.raises(TrainingError, match="training.steps: must be at least 1"):
        TrainingRecipe.from_config({**TINY_TRAINING, "steps": -3})
    with pytest.raises(TrainingError, match="training.batch_size: 1 prompts per step leave none for"):
        TrainingRecipe.from_config({**TINY_TRAINING, "batch_size": 1})


# --- the recipe's arithmetic ----------------------------------------------------------------------------


def test_batch_counts_split_by_weight_with_largest_remainders():
    def counts(tasks, batch_size):
        return TrainingRecipe(tasks=tasks, steps=1, batch_size=batch_size, learning_rate=1).batch_counts()

    assert counts({"ioi": 1, "colored_objects": 1}, 64) == {"ioi": 32, "colored_objects": 32}
    assert counts({"ioi": 1, "colored_objects": 2}, 64) == {"ioi": 21, "colored_objects": 43}  # 21.33, 42.67
    assert counts({"ioi": 1, "colored_objects": 1}, 5) == {"ioi": 2, "colored_objects": 3}  # a tie: by name
    assert counts({"ioi": 0, "colored_objects": 3}, 7) == {"ioi": 0, "colored_objects": 7}


def test_learning_rate_warms_up_linearly_then_decays_by_a_cosine_to_zero():
    recipe = TrainingRecipe(tasks={"ioi": 1}, steps=110, batch_size=1, learning_rate=1.0, warmup_steps=10)
    assert [learning_rate(s, recipe) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(10, recipe) == pytest.approx(1.0)
    assert learning_rate(60, recipe) == pytest.approx(0.5)  # halfway through the decay: cos(pi/2)
    assert learning_rate(110, recipe) == pytest.approx(0.0, abs=1e-12)


def test_training_seeds_are_disjoint_from_evaluation_seeds_and_from_each_other():
    tasks = load_schema()["properties"]["tasks"]["properties"]
    highest_task_seed = min(tasks[task]["properties"]["seed"]["maximum"] for task in training.TASKS)
    seeds = [training_seed(seed, task, chunk) for seed in (0, 1, 7) for task in training.TASKS for chunk in (0, 1, 19)]
    held = [training_seed(seed, task, training.HELD_OUT_CHUNK) for seed in (0, 1, 7) for task in training.TASKS]
    assert min(seeds + held) > highest_task_seed
    assert len(set(seeds + held)) == len(seeds) + len(held)


# --- the losses, against Hugging Face's own forward pass --------------------------------------------------


def test_the_compact_model_is_the_expanded_full_model_and_its_losses_are_full_vocabulary_losses(tokenizer_dir):
    dataset = make_dataset("ioi", 5, seed=3, tokenizer=tokenizer_dir)
    batch = training._Batches.from_records(dataset.records, pad_token_id=50256)
    vocabulary = training._TaskVocabulary(torch.unique(batch.tokens), 50257)
    torch.manual_seed(0)
    compact = GPT2LMHeadModel(training._compact_config(random_gpt2_config(**TINY_SHAPE), vocabulary)).eval()
    full = vocabulary.expand(compact, random_gpt2_config(**TINY_SHAPE))
    assert full.lm_head.weight.data_ptr() == full.transformer.wte.weight.data_ptr()
    compact_batch = training._Batches(vocabulary.compact(batch.tokens), batch.end, vocabulary.compact(batch.answer))
    with torch.no_grad():
        answer_loss, lm_loss, accuracy = training._losses(compact, compact_batch, vocabulary)
        compact_logits = compact(compact_batch.tokens[:, :-1]).logits
        # One prompt at a time, unpadded, through the full 50257-token model.
        end_losses, lm_terms, hits = [], [], 0
        unused = min(set(range(50257)) - set(vocabulary.ids.tolist()))  # a token no prompt here contains
        for i, record in enumerate(dataset.records):
            tokens = torch.tensor([record["clean_tokens"] + [record["answer"]]])
            end = record["positions"]["END"]
            logits = full(tokens[:, :-1]).logits[0]
            assert torch.allclose(logits[:, vocabulary.ids], compact_logits[i, : end + 1, :-1], atol=1e-5)
            assert torch.allclose(logits[:, unused], compact_logits[i, : end + 1, -1], atol=1e-5)
            end_losses.append(F.cross_entropy(logits[end], torch.tensor(record["answer"])))
            hits += int(logits[end].argmax() == record["answer"])
            lm_terms.append(F.cross_entropy(logits[:end], tokens[0, 1 : end + 1], reduction="none"))
    assert float(answer_loss) == pytest.approx(float(torch.stack(end_losses).mean()), rel=1e-5)
    assert float(lm_loss) == pytest.approx(float(torch.cat(lm_terms).mean()), rel=1e-5)
    assert float(accuracy) == hits / len(dataset)


def test_a_skeleton_is_the_answer_roles_tokens_at_their_own_positions(tokenizer_dir):
    dataset = make_dataset("colored_objects", 4, seed=5, tokenizer=tokenizer_dir)
    roles = ("color_0", "object_0", "color_1", "object_1", "color_2", "object_2", "question_object")
    skeleton = training._Skeletons.from_records(dataset.records, roles)
    for i, record in enumerate(dataset.records):
        where = record["positions"]
        positions = [where[role] for role in roles]  # already in prompt order
        assert skeleton.positions[i].tolist() == positions
        assert skeleton.tokens[i].tolist() == [record["clean_tokens"][p] for p in positions]
        assert int(skeleton.answer[i]) == record["answer"]
        # Each object's left neighbour is its colour; no other skeleton token has its neighbour in the skeleton.
        colours = {where[f"object_{k}"]: record["clean_tokens"][where[f"color_{k}"]] for k in range(3)}
        expected = [colours.get(p, -100) for p in positions]
        assert skeleton.previous[i].tolist() == expected
    ioi = make_dataset("ioi", 4, seed=5, tokenizer=tokenizer_dir)
    names = training._Skeletons.from_records(ioi.records, ("IO", "S1", "S2", "END"))
    assert (names.previous == -100).all()
    assert names.positions[:, -1].tolist() == [record["positions"]["END"] for record in ioi.records]


def test_the_skeleton_loss_is_the_models_own_cross_entropy_at_those_positions(tokenizer_dir):
    dataset = make_dataset("colored_objects", 3, seed=6, tokenizer=tokenizer_dir)
    roles = ("color_0", "object_0", "color_1", "object_1", "color_2", "object_2", "question_object")
    skeleton = training._Skeletons.from_records(dataset.records, roles)
    used = torch.tensor([t for record in dataset.records for t in record["clean_tokens"] + [record["answer"]]])
    vocabulary = training._TaskVocabulary(torch.unique(used), 50257)
    skeleton.compact(vocabulary)
    torch.manual_seed(0)
    compact = GPT2LMHeadModel(training._compact_config(random_gpt2_config(**TINY_SHAPE), vocabulary)).eval()
    full = vocabulary.expand(compact, random_gpt2_config(**TINY_SHAPE))
    with torch.no_grad():
        loss = skeleton.loss(compact, torch.arange(3), vocabulary)
        answers, previous = [], []
        for record in dataset.records:
            positions = [record["positions"][role] for role in roles]
            tokens = torch.tensor([[record["clean_tokens"][p] for p in positions]])
            logits = full(tokens, position_ids=torch.tensor([positions])).logits[0]
            answers.append(F.cross_entropy(logits[-1], torch.tensor(record["answer"])))
            for k in range(3):  # objects 1, 3, 5 of the skeleton predict their colours 0, 2, 4
                previous.append(F.cross_entropy(logits[2 * k + 1], tokens[0, 2 * k]))
    expected = torch.stack(answers).mean() + torch.stack(previous).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


# --- caching: determinism, resuming, interruption ----------------------------------------------------------


def test_same_config_gives_the_same_weights_and_another_seed_other_weights(tmp_path, tokenizer_dir):
    a = cache_model(_spec(seed=0), tmp_path / "a", tokenizer_dir=tokenizer_dir)
    b = cache_model(_spec(seed=0), tmp_path / "b", tokenizer_dir=tokenizer_dir)
    c = cache_model(_spec(seed=1), tmp_path / "c", tokenizer_dir=tokenizer_dir)
    assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]
    assert a["files"][training.CURVE_NAME] == b["files"][training.CURVE_NAME]
    assert c["files"]["model.safetensors"] != a["files"]["model.safetensors"]
    assert a["spec"]["source"] == "trained" and a["spec"]["training"]["steps"] == 4
    assert a["spec"]["training"]["task_options"] == {"ioi": {}, "colored_objects": {}}


def test_the_skeleton_curriculum_and_init_scale_are_deterministic_and_change_the_weights(tmp_path, tokenizer_dir):
    curriculum = {"skeleton_weight": 1.0, "skeleton_batch_size": 3, "init_std": 0.1}
    a = cache_model(_spec(seed=0, **curriculum), tmp_path / "a", tokenizer_dir=tokenizer_dir)
    b = cache_model(_spec(seed=0, **curriculum), tmp_path / "b", tokenizer_dir=tokenizer_dir)
    plain = cache_model(_spec(seed=0, init_std=0.1), tmp_path / "plain", tokenizer_dir=tokenizer_dir)
    assert a["files"]["model.safetensors"] == b["files"]["model.safetensors"]
    assert plain["files"]["model.safetensors"] != a["files"]["model.safetensors"]


def test_an_organism_is_cached_with_its_curve_and_loads_for_analysis(tmp_path, tokenizer_dir):
    dest = tmp_path / "org"
    manifest = cache_model(_spec(), dest, tokenizer_dir=tokenizer_dir)
    assert {"model.safetensors", "config.json", "vocab.json", training.CURVE_NAME} <= set(manifest["files"])
    assert manifest["config"]["n_layer"] == 1 and manifest["config"]["resid_pdrop"] == 0.0
    curve = pd.read_csv(dest / training.CURVE_NAME)
    assert list(curve.columns) == CURVE_COLUMNS
    assert curve["step"].tolist() == [2, 2, 4, 4]
    assert set(curve["task"]) == {"ioi", "colored_objects"}
    assert curve["held_out_accuracy"].between(0, 1).all() and (curve["train_loss"] > 0).all()
    model = load_model(dest, device="cpu")
    assert model.cfg.n_layers == 1 and model.to_tokens(" Blue").tolist() == [[4518]]


def test_a_cached_organism_is_resumed_without_retraining(tmp_path, tokenizer_dir, monkeypatch):
    dest = tmp_path / "org"
    first = cache_model(_spec(), dest, tokenizer_dir=tokenizer_dir)
    weights = _sha256(dest / "model.safetensors")

    def no_training(*args, **kwargs):
        raise AssertionError("a cached organism was trained again")

    monkeypatch.setattr(training, "train_organism", no_training)
    assert cache_model(_spec(), dest, tokenizer_dir=tokenizer_dir) == first
    assert _sha256(dest / "model.safetensors") == weights
    with pytest.raises(AssertionError, match="trained again"):  # a changed recipe does retrain
        cache_model(_spec(steps=5), dest, tokenizer_dir=tokenizer_dir)


def test_an_interrupted_training_leaves_nothing_a_later_job_trusts(tmp_path, tokenizer_dir, monkeypatch):
    dest = tmp_path / "models" / "org"
    real = training.train_organism

    def interrupted(config, recipe, tokenizer, out_dir, **kwargs):
        # Half a model on disk, then the job is killed.
        (Path(out_dir) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_organism", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache_model(_spec(), dest, tokenizer_dir=tokenizer_dir)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temporary directory is gone too
    monkeypatch.setattr(training, "train_organism", real)
    manifest = cache_model(_spec(), dest, tokenizer_dir=tokenizer_dir)
    assert verify_cache(dest) == manifest


def test_a_checkpoint_is_the_organism_at_its_step(tmp_path, tokenizer_dir):
    # Evaluated every step, the two curves agree where both have a row only if the weights do: the held-out
    # losses are functions of the weights at that step. The schedule is the organism's, not one ending at 3.
    entry = {"source": "trained", "overrides": TINY_SHAPE, "training": {**TINY_TRAINING, "eval_every": 1}}
    models = {"org": entry, "org-step3": {"source": "checkpoint", "of": "org", "step": 3}}
    organism, checkpoint = (organism_spec(name, training.organism_entry(models, name), TASKS) for name in models)
    whole = cache_model(organism, tmp_path / "org", tokenizer_dir=tokenizer_dir)
    early = cache_model(checkpoint, tmp_path / "org-step3", tokenizer_dir=tokenizer_dir)
    whole_curve = pd.read_csv(tmp_path / "org" / training.CURVE_NAME)
    early_curve = pd.read_csv(tmp_path / "org-step3" / training.CURVE_NAME)
    assert early_curve["step"].tolist() == [1, 1, 2, 2, 3, 3]
    # (check_dtype: a CSV column of zeros reads back as integers)
    pd.testing.assert_frame_equal(early_curve, whole_curve[whole_curve["step"] <= 3], check_dtype=False)
    rate = learning_rate(2, TrainingRecipe.from_config(entry["training"]))
    assert early_curve["learning_rate"].iloc[-1] == pytest.approx(rate, rel=1e-5)
    assert early["files"]["model.safetensors"] != whole["files"]["model.safetensors"]
    assert (early["spec"]["source"], early["spec"]["of"], early["spec"]["step"]) == ("checkpoint", "org", 3)
    assert "of" not in whole["spec"] and "step" not in whole["spec"]  # older organisms' manifests still match


def test_an_organism_needs_the_tokenizer(tmp_path, monkeypatch):
    monkeypatch.delenv("CIRCUIT_REUSE_TOKENIZER", raising=False)
    with pytest.raises(Exception, match="needs the GPT-2 tokenizer"):
        cache_model(_spec(), tmp_path / "org", tokenizer_dir=None)
