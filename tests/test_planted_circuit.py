"""A planted IOI circuit: a 4-layer GPT-2 whose weights are set by hand, so that discovery's answer is known.

Prompts are "When N1 and N2[ went], S2 to" with six names, in a word-level vocabulary of 12 tokens that the
model directory carries as its tokenizer (so the bridge's unembedding is cheap and prompts of two lengths are
right-padded with the tokenizer's own pad token); the answer is the name that occurs once (IO), the wrong one
the repeated subject (S). The model carries the answer through four planted heads, one per stage of IOI's
registered recipe (`get_task("ioi").stages`), each reading the one before through the path its stage scores:

- previous-token head 0.1: at every position attends to the previous one and copies its name into PREVIOUS;
  at S1+1 that is S.
- induction head 1.3: a name's query seeks a key whose PREVIOUS holds the same name, so at S2 it attends to
  S1+1 and copies that PREVIOUS (S) into DUPLICATE: it reads 0.1 through its key and value at S1+1.
- inhibition head 2.0: from END it attends to where DUPLICATE is (S2) and copies it into INHIBITED: it reads
  1.3 through its key and value at S2.
- mover 3.2: from END it attends to every name except the one its query finds in INHIBITED, and copies the
  name it attends to into ANSWER, which the names' unembedding columns read (they read TOKEN too, which nothing
  writes at END): it reads 2.0 through its query at END, and writes the logit difference.

Where the induction and inhibition heads find no match (a first mention, the "abc" prompts below) they attend
to position 0, which holds no name. Every other head writes a real output, most of them one that the
corruptions change at the stages' positions (a test checks that each stage has such distractors), along a path
that leads nowhere the stage scores:

- twins of the induction, inhibition and mover heads (1.0, 2.1, 3.1) attend exactly as the planted head does
  and copy the same content into DECOY, a subspace no head and no unembedding column reads; so do heads that
  copy the previous token (0.2, 1.1, 2.2) or the current one (0.0, 1.2, 2.3, 3.0) into DECOY. The previous-token
  head 0.1 itself, at END, copies S2 into PREVIOUS, which nothing at END reads.
- heads attending to position 0 (0.3, 3.3), identical in clean and corrupted prompts; 3.3 writes the same amount
  into every name's logit.
- the inhibition head at END: its corrupted output turns the mover to the other name, a large total effect on
  the logits, but INHIBITED is no unembedding's subspace, so its path to the logits, which the movers stage
  scores, is zero. A scorer that measured total effects would put it among the movers.

Nothing else connects the heads: the MLPs write nothing, and every layer norm acts as the identity (variance
epsilon 1e12 against variances of order 1, weights sqrt(1e12); every written vector sums to zero, so centring
changes nothing). A head that writes into a subspace its receivers do not read therefore changes them by the
layer norms' remaining 1e-12 part, and exact path patching must score it 0 to float64 rounding.

Two corruptions: "flip" (S2 becomes IO, the IOI task's default) and "abc" (N1, N2 and S2 become three other
names, Wang et al.'s ABC prompts). Flip prompts agree with the clean ones before S2, so at S1+1 no head's output
changes and the previous-token stage scores every head exactly 0 whatever the model; with abc every stage finds
its planted head.
"""

from __future__ import annotations

import math
import random
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch

from circuit_reuse.attribution import DEFAULT_IG_STEPS, METHODS
from circuit_reuse.circuits import head_name
from circuit_reuse.datasets import END, from_records
from circuit_reuse.datasets.ioi import NAMES
from circuit_reuse.discovery import parse_stages, run_stage, selected_heads, stage_receivers, stage_senders
from circuit_reuse.hook_names import head_output
from circuit_reuse.method_comparison import EXACT, rescore_stages
from circuit_reuse.models import ModelSpec, cache_model, load_model, load_tokenizer
from circuit_reuse.patching import AVERAGINGS, SENDER_SETS, path_patch, path_patch_reference
from circuit_reuse.tasks import get_task

N_LAYERS, N_HEADS, D_MODEL = 4, 4, 64
D_HEAD = D_MODEL // N_HEADS
N_POSITIONS = 8
PLANTED_NAMES = NAMES[:6]
FILLERS = ("When", "and", "went", ",", "to")
PAD = "<|endoftext|>"
VOCABULARY = (PAD, *FILLERS, *PLANTED_NAMES)  # token id = index

# The residual stream's subspaces, one dimension per name, filler or position.
CONST = 0  # 1 in every token's embedding: a query that does not depend on the token
TOKEN = range(1, 7)  # the token's own name
FILLER = dict(zip(FILLERS, range(7, 12), strict=True))
POSITION = range(12, 12 + N_POSITIONS)
PREVIOUS = range(20, 26)  # the previous token's name (the previous-token head)
DUPLICATE = range(26, 32)  # the name that occurred before (the induction head)
INHIBITED = range(32, 38)  # the name the mover must not copy (the inhibition head)
ANSWER = range(38, 44)  # the name the mover copies, read by the unembedding
DECOY = range(44, 50)  # written by distractors, read by nothing
BALLAST = D_MODEL - 1  # minus the sum of every written vector, so the layer norms' centring is the identity

# Score gap between the key a head seeks and the rest: e^-40 leaves nothing float64 can see.
SHARPNESS = 40.0
LOGIT_SCALE = 5.0  # the clean prompts' logit difference
LAYER_NORM_EPSILON = 1e12

PLANTED = {"movers": (3, 2), "inhibition": (2, 0), "induction": (1, 3), "previous_token": (0, 1)}
CORRUPTIONS = ("flip", "abc")
N_PROMPTS = 40
AVERAGING_BATCH_SIZE = 16  # 40 prompts: batches of 16, 16 and 8, so batch_mean is not pooled
SELECTION = {"top_percent": 100}  # every head with an effect, down to the score floor
SCORE_FLOOR = 0.01  # of the stage's largest |score|
# A non-planted head's |score| against the planted head's: what is left of the layer norms' 1e-12 part.
NEGLIGIBLE = 1e-6


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------

# Attention: (query dimension, key dimension, score) terms, score(i, j) = sum of score * x_i[query] * x_j[key].
PREVIOUS_POSITION = [(POSITION[i + 1], POSITION[i], SHARPNESS) for i in range(N_POSITIONS - 1)]
SAME_POSITION = [(POSITION[i], POSITION[i], SHARPNESS) for i in range(N_POSITIONS)]
FIRST_POSITION = [(CONST, POSITION[0], SHARPNESS)]
# A match outscores position 0, which outscores the rest: without a match a head reads position 0's nothing.
SAME_NAME_BEFORE = [(TOKEN[n], PREVIOUS[n], 2 * SHARPNESS) for n in range(6)] + FIRST_POSITION
WHERE_DUPLICATED = [(CONST, DUPLICATE[n], 2 * SHARPNESS) for n in range(6)] + FIRST_POSITION
NAMES_NOT_INHIBITED = [(CONST, TOKEN[n], SHARPNESS) for n in range(6)] + [
    (INHIBITED[n], TOKEN[n], -2 * SHARPNESS) for n in range(6)
]


def copy(source, target, scale=1.0):
    """Values and outputs: (value dimension, {output dimension: weight}) per channel, here name n to name n."""
    return [(s, {t: scale}) for s, t in zip(source, target, strict=True)]


# (what the head is, its attention terms, its value-output channels), by (layer, head).
HEADS = {
    (0, 0): ("current token -> DECOY", SAME_POSITION, copy(TOKEN, DECOY)),
    (0, 1): ("previous-token head", PREVIOUS_POSITION, copy(TOKEN, PREVIOUS)),
    (0, 2): ("previous token -> DECOY", PREVIOUS_POSITION, copy(TOKEN, DECOY)),
    (0, 3): ("position 0 -> DECOY", FIRST_POSITION, [(FILLER["When"], {d: 1.0 for d in DECOY})]),
    (1, 0): ("induction twin -> DECOY", SAME_NAME_BEFORE, copy(PREVIOUS, DECOY)),
    (1, 1): ("previous token -> DECOY", PREVIOUS_POSITION, copy(TOKEN, DECOY)),
    (1, 2): ("current token -> DECOY", SAME_POSITION, copy(TOKEN, DECOY)),
    (1, 3): ("induction head", SAME_NAME_BEFORE, copy(PREVIOUS, DUPLICATE)),
    (2, 0): ("inhibition head", WHERE_DUPLICATED, copy(DUPLICATE, INHIBITED)),
    (2, 1): ("inhibition twin -> DECOY", WHERE_DUPLICATED, copy(DUPLICATE, DECOY)),
    (2, 2): ("previous token -> DECOY", PREVIOUS_POSITION, copy(TOKEN, DECOY)),
    (2, 3): ("current token -> DECOY", SAME_POSITION, copy(TOKEN, DECOY)),
    (3, 0): ("current token -> DECOY", SAME_POSITION, copy(TOKEN, DECOY)),
    (3, 1): ("mover twin -> DECOY", NAMES_NOT_INHIBITED, copy(TOKEN, DECOY)),
    (3, 2): ("mover", NAMES_NOT_INHIBITED, copy(TOKEN, ANSWER, LOGIT_SCALE)),
    (3, 3): ("position 0 -> every name's logit", FIRST_POSITION, [(FILLER["When"], {d: 1.0 for d in ANSWER})]),
}


def written(dimensions: dict[int, float]) -> torch.Tensor:
    """A vector written into the residual stream, its sum moved to BALLAST so that it sums to 0."""
    vector = torch.zeros(D_MODEL)
    for dimension, value in dimensions.items():
        vector[dimension] = value
    vector[BALLAST] = -vector.sum()
    return vector


def planted_gpt2():
    """The Hugging Face GPT-2 that HEADS describe (the embedding and unembedding tied, as in GPT-2)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(VOCABULARY),
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_embd=D_MODEL,
        n_positions=N_POSITIONS,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        bos_token_id=VOCABULARY.index(PAD),
        eos_token_id=VOCABULARY.index(PAD),
    )
    model = GPT2LMHeadModel(config).eval()
    gain = math.sqrt(LAYER_NORM_EPSILON)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # biases, MLPs and the pad token
        transformer = model.transformer
        for n, name in enumerate(PLANTED_NAMES):
            # ANSWER[n] in name n's embedding is its unembedding's column: what the mover's output is read by.
            transformer.wte.weight[VOCABULARY.index(name)] = written({CONST: 1.0, TOKEN[n]: 1.0, ANSWER[n]: 1.0})
        for word, dimension in FILLER.items():
            transformer.wte.weight[VOCABULARY.index(word)] = written({CONST: 1.0, dimension: 1.0})
        for i in range(N_POSITIONS):
            transformer.wpe.weight[i] = written({POSITION[i]: 1.0})
        norms = [transformer.ln_f] + [norm for block in transformer.h for norm in (block.ln_1, block.ln_2)]
        for norm in norms:
            norm.weight.fill_(gain)
        for (layer, head), (_, attention, channels) in HEADS.items():
            qkv = transformer.h[layer].attn.c_attn.weight  # [d_model, 3 d_model]: q, k, v of every head
            out = transformer.h[layer].attn.c_proj.weight  # [d_model (heads' channels), d_model]
            q, k, v = (part * D_MODEL + head * D_HEAD for part in range(3))
            for channel, (query, key, score) in enumerate(attention):
                qkv[query, q + channel] = score * math.sqrt(D_HEAD)  # the model divides by sqrt(d_head)
                qkv[key, k + channel] = 1.0
            for channel, (value, outputs) in enumerate(channels):
                qkv[value, v + channel] = 1.0
                out[head * D_HEAD + channel] = written(outputs)
    return model


def planted_tokenizer():
    """A word-level tokenizer of VOCABULARY, its pad token the end-of-text token as GPT-2's is."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({word: i for i, word in enumerate(VOCABULARY)}, unk_token=PAD))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, eos_token=PAD, pad_token=PAD)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The planted GPT-2 and its tokenizer in Hugging Face layout, cached as the workflow caches a local model."""
    saved = tmp_path_factory.mktemp("planted") / "hf"
    planted_gpt2().save_pretrained(saved, safe_serialization=True)
    planted_tokenizer().save_pretrained(saved)
    cached = tmp_path_factory.mktemp("planted") / "model"
    cache_model(ModelSpec(name="planted", source="local", path=str(saved)), cached)
    return cached


@pytest.fixture(scope="module")
def model(model_dir):
    """Loaded as every model of the workflow is, in float64 so that its zeros stay zeros."""
    return load_model(model_dir, device="cpu", dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------
# The prompts
# --------------------------------------------------------------------------------------------------------------


def prompt(first, second, repeated, went):
    return f"When {first} and {second}{' went' if went else ''}, {repeated} to"


@pytest.fixture(scope="module")
def datasets(model_dir):
    """The same 40 clean prompts (ABBA and BABA, with and without "went") under each corruption."""
    tokenizer = load_tokenizer(model_dir)
    rng = random.Random(0)
    cases = [
        (io, s, order, went)
        for io, s in permutations(PLANTED_NAMES, 2)
        for order in ("ABBA", "BABA")
        for went in (False, True)
    ]
    records = {corruption: [] for corruption in CORRUPTIONS}
    for io, s, order, went in rng.sample(cases, N_PROMPTS):
        first, second = (io, s) if order == "ABBA" else (s, io)
        clean = tokenizer(prompt(first, second, s, went)).input_ids
        corrupted = {
            "flip": prompt(first, second, io, went),
            "abc": prompt(*rng.sample([name for name in PLANTED_NAMES if name not in (io, s)], 3), went),
        }
        answer, wrong = (VOCABULARY.index(name) for name in (io, s))
        s1 = clean.index(wrong)
        positions = {"IO": clean.index(answer), "S1": s1, "S1+1": s1 + 1, "S2": len(clean) - 2, END: len(clean) - 1}
        for corruption in CORRUPTIONS:
            records[corruption].append(
                {
                    "clean_tokens": clean,
                    "corrupted_tokens": tokenizer(corrupted[corruption]).input_ids,
                    "answer": answer,
                    "wrong": wrong,
                    "positions": positions,
                }
            )
    pad = tokenizer.pad_token_id
    return {corruption: from_records("ioi", records[corruption], pad_token_id=pad) for corruption in CORRUPTIONS}


def logit_differences(model, dataset, tokens, hooks=()):
    """The task's metric at each prompt's END, from a bridge run on `tokens` with `hooks`."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return dataset.metric(
        logits[torch.arange(len(dataset)), dataset.end], dataset.metric_tokens, dataset.metric_weights
    )


def test_the_planted_model_answers_every_prompt_and_each_corruption_takes_the_answer_away(model, datasets):
    clean = logit_differences(model, datasets["flip"], datasets["flip"].clean_tokens)
    torch.testing.assert_close(clean, torch.full_like(clean, LOGIT_SCALE))
    flip = logit_differences(model, datasets["flip"], datasets["flip"].corrupted_tokens)
    torch.testing.assert_close(flip, torch.full_like(flip, -LOGIT_SCALE))  # S2 = IO: the answer is S
    abc = logit_differences(model, datasets["abc"], datasets["abc"].corrupted_tokens)
    torch.testing.assert_close(abc, torch.zeros_like(abc))  # neither IO nor S is a name of the prompt


def test_the_inhibition_head_moves_the_answer_but_has_no_direct_path_to_the_logits(model, datasets):
    """Its total effect, every later head recomputed, is the whole corruption's; the movers stage, which scores
    each head's path to the logits alone, gives it nothing."""
    dataset = datasets["flip"]
    layer, head = PLANTED["inhibition"]
    rows, end = torch.arange(len(dataset)), dataset.end
    _, cache = model.run_with_cache(dataset.corrupted_tokens, names_filter=head_output(layer))
    corrupted_z = cache[head_output(layer)][rows, end, head]

    def patch(z, hook):
        z[rows, end, head] = corrupted_z
        return z

    patched = logit_differences(model, dataset, dataset.clean_tokens, [(head_output(layer), patch)])
    clean = logit_differences(model, dataset, dataset.clean_tokens)
    corrupted = logit_differences(model, dataset, dataset.corrupted_tokens)
    total_effect = float((patched - clean).mean() / (corrupted - clean).mean())
    assert total_effect == pytest.approx(1.0)
    movers = path_patch(
        model, dataset.clean_tokens, dataset.corrupted_tokens, dataset.answer_tokens, "logits", None, progress=False
    )
    assert abs(movers[layer, head]) < NEGLIGIBLE * abs(movers[PLANTED["movers"]])


# --------------------------------------------------------------------------------------------------------------
# Discovery, stage by stage
# --------------------------------------------------------------------------------------------------------------


def ioi_stages(sender_set: str):
    """IOI's registered stages, scored exactly, with the score floor of this file's selection."""
    return parse_stages("ioi", get_task("ioi").stages, senders=sender_set, min_relative_score=SCORE_FLOOR)


def discover(model, dataset, specs, averaging):
    """Each stage's grid and selected heads, each stage's receivers the heads its earlier stage selected, as the
    workflow's stage jobs chain them."""
    grids, chosen, receivers_of = {}, {}, {}
    for spec in specs:
        receivers = stage_receivers(spec, chosen.get(spec.receivers, []))
        grids[spec.name] = run_stage(
            model,
            dataset,
            spec,
            receivers,
            batch_size=N_PROMPTS,
            averaging=averaging,
            averaging_batch_size=AVERAGING_BATCH_SIZE,
            progress=False,
        )
        chosen[spec.name] = selected_heads(grids[spec.name], SELECTION, spec.min_relative_score)
        receivers_of[spec.name] = receivers
    return grids, chosen, receivers_of


def planted_receivers(spec):
    """A stage's receivers when its earlier stage selected that stage's planted head."""
    return stage_receivers(spec, [] if spec.kind == "logits" else [PLANTED[spec.receivers]])


@pytest.mark.parametrize("averaging", AVERAGINGS)
@pytest.mark.parametrize("sender_set", list(SENDER_SETS))
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_stage_selects_exactly_its_planted_head(model, datasets, corruption, sender_set, averaging):
    """Each stage keeps every head with a nonzero score down to 1% of its best (SELECTION, SCORE_FLOOR), a rule
    that is not told how many heads to keep, and that is the planted head alone."""
    specs = ioi_stages(sender_set)
    grids, chosen, receivers_of = discover(model, datasets[corruption], specs, averaging)
    for spec in specs:
        grid, planted = grids[spec.name], PLANTED[spec.name]
        if corruption == "flip" and spec.name == "previous_token":
            # Flip prompts agree with the clean ones up to S2, after S1+1: every head there has its clean output.
            assert not np.isnan(grid[planted]), "the previous-token head is a sender of this stage"
            np.testing.assert_array_equal(grid[~np.isnan(grid)], 0.0)
            assert chosen[spec.name] == []
            continue
        assert chosen[spec.name] == [planted], spec.name
        others = ~np.isnan(grid)
        others[planted] = False
        assert np.abs(grid[others]).max() < NEGLIGIBLE * abs(grid[planted]), spec.name
        if spec.kind != "logits" and sender_set == "authors":
            # Heads in the receiver's own layer send it nothing: it reads the layer's input before they write.
            receivers = {(layer, head) for layer, head, _ in receivers_of[spec.name]}
            (layer,) = {layer for layer, _ in receivers}
            same_layer = [(layer, head) for head in range(N_HEADS) if (layer, head) not in receivers]
            assert [grid[head] for head in same_layer] == [0.0] * len(same_layer), spec.name


def output_changes(model, dataset, role: str) -> np.ndarray:
    """[n_layers, n_heads]: the largest change, over the prompts, that the corruption makes to each head's output
    (`hook_z`) at `role`."""
    names = [head_output(layer) for layer in range(N_LAYERS)]
    _, clean = model.run_with_cache(dataset.clean_tokens, names_filter=names)
    _, corrupted = model.run_with_cache(dataset.corrupted_tokens, names_filter=names)
    rows, at = torch.arange(len(dataset)), dataset.positions[role]
    return torch.stack([(corrupted[name] - clean[name])[rows, at].norm(dim=-1).amax(dim=0) for name in names]).numpy()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_stage_has_distractors_whose_output_the_corruption_changes(model, datasets, corruption):
    """Senders other than the planted head whose output at the stage's position the corruption changes about as
    much as the planted head's: their zero scores are their paths', not a silent model's."""
    dataset = datasets[corruption]
    for spec in ioi_stages("any_path"):  # the heads below the receivers, each with a path to them
        change = output_changes(model, dataset, spec.position)
        if corruption == "flip" and spec.name == "previous_token":
            np.testing.assert_array_equal(change, 0.0)  # why the stage scores every head 0
            continue
        planted = PLANTED[spec.name]
        senders = stage_senders(spec, planted_receivers(spec), N_LAYERS, N_HEADS)
        distractors = {head for head in senders if head != planted and change[head] >= change[planted] / 2}
        assert distractors, spec.name
        if spec.name == "movers":
            assert PLANTED["inhibition"] in distractors


def test_the_sender_sets_score_the_same_heads_alike(model, datasets):
    """With one receiver per stage, any_path and below_lowest are the same heads, and authors adds those of the
    receiver's own layer (exactly 0 above): every set gives every shared head the same score."""
    dataset = datasets["abc"]
    grids = {sender_set: discover(model, dataset, ioi_stages(sender_set), "pooled")[0] for sender_set in SENDER_SETS}
    for stage in PLANTED:
        np.testing.assert_array_equal(grids["any_path"][stage], grids["below_lowest"][stage])
        shared = ~np.isnan(grids["any_path"][stage])
        np.testing.assert_allclose(grids["authors"][stage][shared], grids["any_path"][stage][shared], rtol=1e-12)


# The key and value stages, where the fast path recomputes every position from the patched one to END.
@pytest.mark.parametrize("stage", ["induction", "previous_token"])
def test_the_fast_path_equals_the_literal_recipe_on_the_planted_model(model, datasets, stage):
    dataset = datasets["abc"]
    (spec,) = [spec for spec in ioi_stages("authors") if spec.name == stage]
    arguments = (model, dataset.clean_tokens, dataset.corrupted_tokens, dataset.answer_tokens)
    receivers, position = planted_receivers(spec), dataset.positions[spec.position]
    options = {"averaging": "pooled", "batch_size": N_PROMPTS, "progress": False}
    fast = path_patch(*arguments, receivers, position, **options)
    reference = path_patch_reference(*arguments, receivers, position, **options)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-10, equal_nan=True)


# --------------------------------------------------------------------------------------------------------------
# The approximate scorers, beside the exact one
# --------------------------------------------------------------------------------------------------------------


def describe(grid: np.ndarray, heads) -> str:
    return ", ".join(f"{head_name(head)} {grid[head]:+.3g}" for head in heads) or "none"


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_the_approximate_scorers_on_the_planted_circuit(model, datasets, corruption):
    """Printed (pytest -s): what EAP and EAP-IG select and score at each stage, on the receivers the exact
    chain selected. Asserted: only what holds by construction."""
    dataset = datasets[corruption]
    specs = ioi_stages("authors")
    grids, _, _ = discover(model, dataset, specs, "pooled")
    approximations = [method for method in METHODS if method != EXACT]
    by_stage, _, receivers_of = rescore_stages(
        model,
        dataset,
        specs,
        grids,
        SELECTION,
        approximations,
        DEFAULT_IG_STEPS,
        batch_size=N_PROMPTS,
        averaging="pooled",
        progress=False,
    )
    print(
        f"\nplanted IOI circuit, {corruption} corruption, {N_PROMPTS} prompts (selection: {SELECTION}, floor "
        f"{SCORE_FLOOR} of the stage's best)"
    )
    for spec in specs:
        exact = by_stage[spec.name][EXACT]
        print(f"  {spec.name} ({receivers_of[spec.name]} at {spec.position}), planted {head_name(PLANTED[spec.name])}")
        for method in METHODS:
            grid = by_stage[spec.name][method]
            heads = selected_heads(grid, SELECTION, SCORE_FLOOR)
            print(
                f"    {method:>6}: selects {describe(grid, heads)}; largest |score| {np.nanmax(np.abs(grid)):.3g}; "
                f"planted head {grid[PLANTED[spec.name]]:+.3g}"
            )
            assert grid.shape == (N_LAYERS, N_HEADS)
            np.testing.assert_array_equal(np.isnan(grid), np.isnan(exact))  # the same senders
            assert np.isfinite(grid[~np.isnan(exact)]).all()
    # To the logits every path here is linear (identity layer norms, no MLPs), so the first-order estimate is the
    # effect, and EAP-IG's gradient is the same at every point of its line.
    for method in approximations:
        np.testing.assert_allclose(by_stage["movers"][method], by_stage["movers"][EXACT], rtol=0, atol=1e-9)
