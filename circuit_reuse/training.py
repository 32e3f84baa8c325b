"""Model organisms: small GPT-2s trained on the tasks' own generators, so every stage meets a model that
does the tasks.

`train_organism` builds a GPT-2 of the configured shape (real GPT-2 tokenizer and vocabulary), trains it
on prompts from `circuit_reuse.datasets` and writes it as a Hugging Face directory with its training
curve. `circuit_reuse.models.cache_model` calls it for `source: trained` and caches the result like every
other model (built in a temporary directory, renamed into place at the end, with a manifest).

The recipe, and why:

- Each task contributes a pool of distinct training prompts (`prompts_per_task`), drawn from seeds at
  or above `TRAINING_SEED_BASE`. The workflow's datasets use seeds below it (the schema enforces that), so
  no evaluation prompt comes from a training seed. Held-out accuracy during training uses one more seed
  of the training range that no pool uses.
- The loss is the answer's cross-entropy at END (what evaluation measures: the argmax over the whole
  vocabulary), plus, weighted by `lm_loss_weight`, next-token prediction over the rest of the prompt.
  The language-modelling term is what lets one-shot retrieval be learned: in Colored Objects the solved
  example's "A: Orange" is itself a retrieval of a colour from a list, and in IOI predicting S2 asks which
  of the two names comes back.
- Both are exact softmaxes over all 50257 tokens at little cost: the tokens the prompts never use share
  one embedding row during training (see `_TaskVocabulary`), so the output layer has a few hundred
  columns instead of 50257, and the saved model is the full GPT-2 that this parameterisation describes.
- A skeleton curriculum (`skeleton_weight`): a task may declare `skeleton_roles`, the tokens that carry
  its answer (Colored Objects: the query's colours, objects and asked object). Each step then also trains
  on skeletons: those tokens alone at their own positions, the answer at the last of them, and at every
  skeleton token whose left neighbour in the prompt is in the skeleton too, that neighbour as a target
  (a previous-token target: in Colored Objects each object predicts its colour). Without the filler the
  binding that a 62-token prompt hides is a short, strong signal, and the previous-token target trains
  the head that the binding composes with; a head learned on the skeleton works unchanged in the full
  prompt, whose positions are the same.
- `init_std`: the weights' initial standard deviation (GPT-2's is 0.02). A larger one (0.1) makes the
  initial attention far from uniform, and the skeleton's binding is then found within a few hundred steps
  where at 0.02 it sat at chance for every run tried (up to 2450 steps; the README has the trials).
- AdamW with a linear warmup and a cosine decay to zero; no dropout (the prompts are plentiful and
  dropout would make the weights depend on more random state).

Same config, same machine, same thread count: the same bytes of weights (initialisation and batch order
come from `seed` alone).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from circuit_reuse.datasets import END, DatasetError, generate_records, pad_tokens
from circuit_reuse.tasks import registered_tasks

# The built-in tasks, in registry order: each (seed, task) owns a block of training seeds by this index.
TASKS = tuple(registered_tasks())
# Dataset seeds in the config stay below this; every training prompt comes from a seed at or above it.
TRAINING_SEED_BASE = 2**40
# Prompts per generator call while building a pool: each chunk has its own seed, so a longer pool keeps
# the prompts of a shorter one.
POOL_CHUNK = 500
SEED_BLOCK = 2**20
HELD_OUT_CHUNK = SEED_BLOCK - 1
CURVE_NAME = "training_curve.csv"
CURVE_COLUMNS = [
    "step",
    "task",
    "learning_rate",
    "train_loss",
    "train_accuracy",
    "held_out_loss",
    "held_out_accuracy",
]


class TrainingError(ValueError):
    """A training recipe that cannot run (unknown task, a shape that does not divide, ...)."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How an organism is trained: one `training` entry of a `source: trained` model in the config."""

    tasks: Mapping[str, float]
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    warmup_steps: int = 100
    weight_decay: float = 0.01
    lm_loss_weight: float = 1.0
    prompts_per_task: int = 10000
    eval_every: int = 50
    eval_prompts: int = 200
    init_std: float = 0.02
    skeleton_weight: float = 0.0
    skeleton_batch_size: int = 128
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> TrainingRecipe:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(entry) - known)
        if unknown:
            raise TrainingError(f"training: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        recipe = cls(**entry)
        recipe.check()
        return recipe

    def check(self) -> None:
        """Raise TrainingError naming the key of the first problem."""
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise TrainingError(f"training.tasks: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
        if not self.tasks:
            raise TrainingError("training.tasks: name at least one task")
        for task, weight in self.tasks.items():
            if not weight >= 0:
                raise TrainingError(f"training.tasks.{task}: the weight must be >= 0, got {weight}")
        if sum(self.tasks.values()) <= 0:
            raise TrainingError("training.tasks: the weights must not all be 0")
        for key in ("steps", "batch_size", "prompts_per_task", "eval_every", "eval_prompts", "skeleton_batch_size"):
            if getattr(self, key) < 1:
                raise TrainingError(f"training.{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "weight_decay", "lm_loss_weight", "skeleton_weight", "seed"):
            if getattr(self, key) < 0:
                raise TrainingError(f"training.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("learning_rate", "init_std"):
            if not getattr(self, key) > 0:
                raise TrainingError(f"training.{key}: must be > 0, got {getattr(self, key)}")
        if self.skeleton_weight > 0 and not self.skeleton_tasks():
            raise TrainingError(
                f"training.skeleton_weight: none of {', '.join(sorted(self.tasks))} declares a skeleton "
                f"(tasks that do: {', '.join(t for t, spec in registered_tasks().items() if spec.skeleton_roles)})"
            )
        counts = self.batch_counts()
        starved = [task for task, weight in self.tasks.items() if weight > 0 and counts[task] == 0]
        if starved:
            raise TrainingError(
                f"training.batch_size: {self.batch_size} prompts per step leave none for {', '.join(starved)}; "
                "raise the batch size or that task's weight"
            )

    def skeleton_tasks(self) -> list[str]:
        """The trained tasks (weight > 0) that declare skeleton roles, sorted."""
        specs = registered_tasks()
        return sorted(t for t, w in self.tasks.items() if w > 0 and t in specs and specs[t].skeleton_roles)

    def batch_counts(self) -> dict[str, int]:
        """Prompts of each task in every step: batch_size split by the weights (largest remainders)."""
        total = sum(self.tasks.values())
        shares = {task: self.batch_size * weight / total for task, weight in self.tasks.items()}
        counts = {task: math.floor(share) for task, share in shares.items()}
        by_remainder = sorted(shares, key=lambda task: (counts[task] - shares[task], task))
        for task in by_remainder[: self.batch_size - sum(counts.values())]:
            counts[task] += 1
        return counts


def training_seed(seed: int, task: str, chunk: int) -> int:
    """The generator seed of one chunk of a task's prompts for training seed `seed`.

    Each (seed, task) owns a block of SEED_BLOCK seeds; training chunks count up from its start and the
    held-out chunks down from HELD_OUT_CHUNK, its end.
    """
    if not 0 <= chunk < SEED_BLOCK:
        raise TrainingError(f"chunk {chunk} is outside a seed block of {SEED_BLOCK}")
    return TRAINING_SEED_BASE + (seed * len(TASKS) + TASKS.index(task)) * SEED_BLOCK + chunk


@dataclass
class _Batches:
    """One task's prompts as tensors: prompt plus answer, right-padded, with END per row."""

    tokens: torch.Tensor  # [n, seq + 1]: the clean prompt followed by its answer
    end: torch.Tensor  # [n]
    answer: torch.Tensor  # [n]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], pad_token_id: int) -> _Batches:
        rows = [r["clean_tokens"] + [r["answer"]] for r in records]
        return cls(
            tokens=pad_tokens(rows, pad_token_id),
            end=torch.tensor([r["positions"][END] for r in records], dtype=torch.long),
            answer=torch.tensor([r["answer"] for r in records], dtype=torch.long),
        )

    def take(self, index: torch.Tensor) -> _Batches:
        end = self.end[index]
        width = int(end.max()) + 2
        return _Batches(self.tokens[index, :width], end, self.answer[index])


@dataclass
class _Skeletons:
    """One task's prompts reduced to its skeleton roles' tokens, each at its own position (see the module)."""

    tokens: torch.Tensor  # [n, k]: the skeleton's tokens in prompt order
    positions: torch.Tensor  # [n, k]: their positions in the prompt
    answer: torch.Tensor  # [n]: the prompt's answer, predicted at the skeleton's last token
    previous: torch.Tensor  # [n, k]: the token left of each, where that token is in the skeleton too; else -100

    @classmethod
    def from_records(cls, records: list[dict[str, Any]], roles: tuple[str, ...]) -> _Skeletons:
        positions = [sorted(r["positions"][role] for role in roles) for r in records]
        tokens = [[r["clean_tokens"][p] for p in row] for r, row in zip(records, positions, strict=True)]
        previous = [
            [-100] + [tok[j - 1] if row[j - 1] == row[j] - 1 else -100 for j in range(1, len(row))]
            for tok, row in zip(tokens, positions, strict=True)
        ]
        return cls(
            tokens=torch.tensor(tokens, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            answer=torch.tensor([r["answer"] for r in records], dtype=torch.long),
            previous=torch.tensor(previous, dtype=torch.long),
        )

    def compact(self, vocabulary: _TaskVocabulary) -> None:
        self.tokens, self.answer = vocabulary.compact(self.tokens), vocabulary.compact(self.answer)
        has_target = self.previous >= 0
        self.previous[has_target] = vocabulary.compact(self.previous[has_target])

    def loss(self, model, index: torch.Tensor, vocabulary: _TaskVocabulary) -> torch.Tensor:
        """The answer's cross-entropy at the last skeleton token plus the previous-token targets' mean."""
        logits = vocabulary.full_vocabulary_logits(model(self.tokens[index], position_ids=self.positions[index]).logits)
        loss = F.cross_entropy(logits[:, -1], self.answer[index])
        previous = self.previous[index]
        if (previous >= 0).any():
            loss = loss + F.cross_entropy(logits.flatten(0, 1), previous.flatten(), ignore_index=-100)
        return loss


def _pool(task: str, n: int, seeds: list[int], recipe: TrainingRecipe, tokenizer: Any) -> list[dict[str, Any]]:
    """n prompts of `task`, POOL_CHUNK from each seed in turn (the last seed gives the remainder)."""
    options = dict(recipe.task_options.get(task, {}))
    records: list[dict[str, Any]] = []
    for seed in seeds:
        if len(records) >= n:
            break
        chunk, _ = generate_records(task, min(POOL_CHUNK, n - len(records)), seed, tokenizer, **options)
        records.extend(chunk)
    return records


@dataclass
class _TaskVocabulary:
    """The tokens the prompts use, each with its own embedding; every other token shares one more.

    Training runs a GPT-2 whose vocabulary is these tokens plus that shared row (OTHER): its logits are
    the full model's logits for these tokens, and the full model's logit for every other token is OTHER's.
    So the full 50257-way softmax is exact at the cost of a few hundred columns: OTHER's logit enters it
    once per token it stands for (plus log of their count). `expand` writes the full GPT-2 at the end.
    """

    ids: torch.Tensor  # [k] sorted full-vocabulary ids
    full_size: int

    @property
    def other(self) -> int:
        return len(self.ids)

    def compact(self, tokens: torch.Tensor) -> torch.Tensor:
        index = torch.full((self.full_size,), self.other, dtype=torch.long)
        index[self.ids] = torch.arange(len(self.ids))
        return index[tokens]

    def full_vocabulary_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Compact logits whose softmax is the full vocabulary's (OTHER counts once per token it stands for)."""
        offset = torch.zeros(logits.shape[-1])
        offset[self.other] = math.log(self.full_size - len(self.ids))
        return logits + offset

    def expand(self, compact_model: Any, full_config: Any) -> Any:
        """The full GPT-2 whose every output on these tokens equals `compact_model`'s."""
        from transformers import GPT2LMHeadModel

        state = compact_model.state_dict()
        compact_embedding = state.pop("transformer.wte.weight")
        state.pop("lm_head.weight", None)  # tied to the embedding
        embedding = compact_embedding[self.other].repeat(self.full_size, 1)
        embedding[self.ids] = compact_embedding[: self.other]
        model = GPT2LMHeadModel(full_config)
        missing, unexpected = model.load_state_dict({**state, "transformer.wte.weight": embedding}, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise TrainingError(
                f"expanding the organism's vocabulary failed: missing {missing}, unexpected {unexpected}"
            )
        model.tie_weights()
        return model.eval()


def _compact_config(gpt2_config: Any, vocabulary: _TaskVocabulary) -> Any:
    """The shape of `gpt2_config` over the compact vocabulary (its special tokens have no compact id)."""
    config = copy.deepcopy(gpt2_config)
    config.vocab_size = len(vocabulary.ids) + 1
    config.bos_token_id = config.eos_token_id = None
    return config


def _losses(model, batch: _Batches, vocabulary: _TaskVocabulary):
    """(answer loss at END, next-token loss before END, END accuracy) of one batch, over the full vocabulary.

    `batch` holds compact token ids (see _TaskVocabulary); accuracy is the argmax over the full
    vocabulary, where OTHER's logit stands for every token outside the prompts'.
    """
    inputs = batch.tokens[:, :-1]
    raw = model(inputs).logits  # [n, seq, k + 1]: each token's logit, OTHER's for all the others
    logits = vocabulary.full_vocabulary_logits(raw)
    rows = torch.arange(len(batch.end))
    answer_loss = F.cross_entropy(logits[rows, batch.end], batch.answer)
    # Right when the answer's logit is the largest: above every prompt token's and above OTHER's.
    accuracy = (raw[rows, batch.end].argmax(-1) == batch.answer).float().mean()
    positions = torch.arange(inputs.shape[1])
    before_end = positions[None, :] < batch.end[:, None]  # padding and END itself are left out
    targets = batch.tokens[:, 1:][before_end]
    lm_loss = F.cross_entropy(logits[before_end], targets) if len(targets) else answer_loss.new_zeros(())
    return answer_loss, lm_loss, accuracy


def learning_rate(step: int, recipe: TrainingRecipe) -> float:
    """Linear warmup over warmup_steps, then a cosine from learning_rate down to 0 at the last step."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = (step - recipe.warmup_steps) / span
    return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def organism_entry(models: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    """The config entry that trains model `name`: its own for `source: trained`; for `source: checkpoint`, the
    entry of the organism it is a checkpoint `of` (shape, seed, recipe) with its own source, `of` and `step`."""
    entry = models[name]
    if entry["source"] != "checkpoint":
        return dict(entry)
    return {**models[entry["of"]], "source": "checkpoint", "of": entry["of"], "step": entry["step"]}


def organism_spec(name: str, entry: Mapping[str, Any], tasks: Mapping[str, Mapping[str, Any]]) -> Any:
    """The ModelSpec of a `source: trained` entry (or of a checkpoint's, from `organism_entry`), its recipe
    carrying the configured vocabularies (templates, names, colours, ...) of the tasks it trains on, so the
    organism learns the prompts it meets."""
    from circuit_reuse.models import ModelSpec

    options = {
        task: {k: v for k, v in tasks[task].items() if k not in ("n_prompts", "seed")}
        for task in entry["training"]["tasks"]
        if task in tasks
    }
    return ModelSpec.from_config(name, {**entry, "training": {**entry["training"], "task_options": options}})


def build_organism(spec: Any, work: str | Path, tokenizer_dir: str | Path | None) -> pd.DataFrame:
    """Train the organism a `source: trained` or `checkpoint` ModelSpec describes into `work` (see cache_model).

    The spec's `seed` seeds everything (initialisation, batch order, the training prompts); its
    `overrides` give the shape; its `training` entry is the recipe. A checkpoint stops after its `step`:
    the organism as its full training had it then, learning rate schedule included.
    """
    from circuit_reuse.models import ModelCacheError, random_gpt2_config

    if tokenizer_dir is None:
        raise ModelCacheError(
            f"model {spec.name!r} is trained on the tasks' prompts and needs the GPT-2 tokenizer: set `tokenizer:` "
            "in the config, or $CIRCUIT_REUSE_TOKENIZER"
        )
    recipe = TrainingRecipe.from_config({**spec.training, "seed": spec.seed})
    # No dropout: the training prompts are plentiful, and the weights then depend on `seed` alone.
    config = random_gpt2_config(spec.architecture, **spec.overrides, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return train_organism(config, recipe, tokenizer_dir, work, stop_after=spec.step)


def train_organism(
    gpt2_config: Any,
    recipe: TrainingRecipe,
    tokenizer: Any,
    out_dir: str | Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> pd.DataFrame:
    """Train a GPT-2 of `gpt2_config`'s shape by `recipe`; save it (safetensors) and its curve in `out_dir`.

    Returns the training curve: per evaluation step and task, the learning rate, the mean training loss at
    END and accuracy since the previous evaluation, and the held-out loss and accuracy at END.
    `stop_after` (at most recipe.steps) ends training after that many of the recipe's steps, evaluated
    there: the same weights the whole run has at that step, since nothing before it depends on the end.
    """
    from tqdm.auto import tqdm
    from transformers import GPT2LMHeadModel

    from circuit_reuse.datasets.vocab import as_tokenizer

    recipe.check()
    last_step = recipe.steps if stop_after is None else stop_after
    if not 1 <= last_step <= recipe.steps:
        raise TrainingError(f"stop_after: {stop_after} is not a step of the recipe's 1..{recipe.steps}")
    tokenizer = as_tokenizer(tokenizer)
    pad = tokenizer.eos_token_id
    tasks = sorted(task for task, weight in recipe.tasks.items() if weight > 0)  # key order changes nothing
    counts = recipe.batch_counts()
    n_chunks = math.ceil(recipe.prompts_per_task / POOL_CHUNK)
    n_held_chunks = math.ceil(recipe.eval_prompts / POOL_CHUNK)
    skeleton_tasks = recipe.skeleton_tasks() if recipe.skeleton_weight > 0 else []
    train, held_out, skeletons = {}, {}, {}
    for task in tasks:
        seeds = [training_seed(recipe.seed, task, chunk) for chunk in range(n_chunks)]
        records = _pool(task, recipe.prompts_per_task, seeds, recipe, tokenizer)
        train[task] = _Batches.from_records(records, pad)
        if task in skeleton_tasks:
            skeletons[task] = _Skeletons.from_records(records, registered_tasks()[task].skeleton_roles)
        seeds = [training_seed(recipe.seed, task, HELD_OUT_CHUNK - k) for k in range(n_held_chunks)]
        held_out[task] = _Batches.from_records(_pool(task, recipe.eval_prompts, seeds, recipe, tokenizer), pad)
        if train[task].tokens.shape[1] > gpt2_config.n_positions:
            raise TrainingError(f"{task}: prompts of {train[task].tokens.shape[1]} tokens exceed n_positions")
    # The tokens the prompts use (prompt, answer, padding) get rows of their own; see _TaskVocabulary.
    used = [batches.tokens.flatten() for batches in [*train.values(), *held_out.values()]]
    vocabulary = _TaskVocabulary(torch.unique(torch.cat(used)), gpt2_config.vocab_size)
    for batches in [*train.values(), *held_out.values()]:
        batches.tokens = vocabulary.compact(batches.tokens)
        batches.answer = vocabulary.compact(batches.answer)
    for skeleton in skeletons.values():
        skeleton.compact(vocabulary)
    torch.manual_seed(recipe.seed)
    compact_config = _compact_config(gpt2_config, vocabulary)
    compact_config.initializer_range = recipe.init_std
    model = GPT2LMHeadModel(compact_config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        betas=(0.9, 0.98),
    )
    order = torch.Generator().manual_seed(recipe.seed)
    sums = {task: [0.0, 0.0, 0] for task in tasks}  # loss, accuracy, steps since the last evaluation
    rows = []
    # Each task's share of every step's loss (its whole prompts and, where it has them, its skeletons).
    loss_shares = {task: recipe.tasks[task] / sum(recipe.tasks[t] for t in tasks) for task in tasks}
    bar = tqdm(range(last_step), desc="training", unit="step", disable=not progress, smoothing=0.05)
    for step in bar:
        rate = learning_rate(step, recipe)
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad(set_to_none=True)
        for task in tasks:
            index = torch.randint(len(train[task].end), (counts[task],), generator=order)
            answer_loss, lm_loss, accuracy = _losses(model, train[task].take(index), vocabulary)
            ((answer_loss + recipe.lm_loss_weight * lm_loss) * loss_shares[task]).backward()
            sums[task][0] += answer_loss.item()
            sums[task][1] += accuracy.item()
            sums[task][2] += 1
            if task in skeletons:
                index = torch.randint(len(skeletons[task].answer), (recipe.skeleton_batch_size,), generator=order)
                skeleton_loss = skeletons[task].loss(model, index, vocabulary)
                (recipe.skeleton_weight * skeleton_loss * loss_shares[task]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % recipe.eval_every == 0 or step + 1 == last_step:
            model.eval()
            with torch.no_grad():
                for task in tasks:
                    held_loss, _, held_accuracy = _losses(model, held_out[task], vocabulary)
                    loss_sum, accuracy_sum, n = sums[task]
                    rows.append(
                        {
                            "step": step + 1,
                            "task": task,
                            "learning_rate": rate,
                            "train_loss": loss_sum / n,
                            "train_accuracy": accuracy_sum / n,
                            "held_out_loss": float(held_loss),
                            "held_out_accuracy": float(held_accuracy),
                        }
                    )
                    sums[task] = [0.0, 0.0, 0]
            model.train()
            bar.set_postfix(
                {
                    f"{row['task']}": f"loss {row['train_loss']:.3f} acc {row['held_out_accuracy']:.1%}"
                    for row in rows[-len(tasks) :]
                }
            )
    out_dir = Path(out_dir)
    vocabulary.expand(model, gpt2_config).save_pretrained(out_dir, safe_serialization=True)
    curve = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    curve.to_csv(out_dir / CURVE_NAME, index=False, float_format="%.6g")
    return curve


__all__ = [
    "build_organism",
    "organism_entry",
    "organism_spec",
    "CURVE_NAME",
    "TRAINING_SEED_BASE",
    "DatasetError",
    "TrainingError",
    "TrainingRecipe",
    "learning_rate",
    "train_organism",
    "training_seed",
]
