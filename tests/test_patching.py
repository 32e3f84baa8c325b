"""Path patching: the fast implementation against the literal recipe, cases with known answers, and input checks.

`path_patch_reference` runs the recipe literally (two hooked forward passes of the bridge per sender), so it is
the ground truth here; `path_patch` must give the same scores on every kind of job the workflow runs.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from circuit_reuse.metrics import LogitDifference, ProbabilityDifference, pair_tokens
from circuit_reuse.models import ModelSpec, cache_model, load_model
from circuit_reuse.patching import SENDER_SETS, path_patch, path_patch_reference, sender_heads

TOLERANCE = 1e-4
# Token ids drawn for prompts stay below GPT-2's end-of-text id (50256), which is also the pad token.
TOKEN_LIMIT = 50000
SHAPES = {
    "2L4H64d": {"n_layer": 2, "n_head": 4, "n_embd": 64},
    "3L4H48d": {"n_layer": 3, "n_head": 4, "n_embd": 48},
    "4L4H32d": {"n_layer": 4, "n_head": 4, "n_embd": 32},
}
# GPT-2's own initialisation (std 0.02) leaves attention almost uniform in a random model, so q/k/v paths score
# about 1e-3, too close to float32 rounding (about 1e-5 here) to tell a wrong implementation from a right one.
# Ten times larger weights give sharp attention and scores up to about 0.05 (logits: about 0.5).
INITIALIZER_RANGE = 0.2


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory, tokenizer_dir):
    """Factory for cached-and-loaded random GPT-2 bridges with sharp attention: sharp_model("2L4H64d", seed)."""
    built = {}

    def make(shape: str, seed: int):
        if (shape, seed) not in built:
            overrides = {**SHAPES[shape], "n_positions": 64, "initializer_range": INITIALIZER_RANGE}
            spec = ModelSpec(name="sharp", source="random", overrides=overrides, seed=seed)
            dest = tmp_path_factory.mktemp("sharp") / "model"
            cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
            built[shape, seed] = load_model(dest, device="cpu")
        return built[shape, seed]

    return make


def make_prompts(model, lengths, seed, corrupt_at=None):
    """Right-padded random prompts of the given lengths with a minimal corruption, and random answers.

    Each corrupted prompt differs from its clean one in the tokens at `corrupt_at(length)` (indices into the
    prompt; default: two tokens before the last one, so both END and earlier positions see the change).
    Returns clean, corrupted [n, max(lengths)], answers [n, 2] and END [n].
    """
    generator = torch.Generator().manual_seed(seed)
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.cfg.eos_token_id
    width = max(lengths)
    clean = torch.full((len(lengths), width), pad, dtype=torch.long)
    corrupted = clean.clone()
    for i, length in enumerate(lengths):
        tokens = torch.randint(0, TOKEN_LIMIT, (length,), generator=generator)
        changed = tokens.clone()
        where = corrupt_at(length) if corrupt_at else [length - 3, length - 2]
        changed[where] = torch.randint(0, TOKEN_LIMIT, (len(where),), generator=generator)
        clean[i, :length] = tokens
        corrupted[i, :length] = changed
    answers = torch.randint(0, TOKEN_LIMIT, (len(lengths), 2), generator=generator)
    end = torch.tensor(lengths) - 1
    return clean, corrupted, answers, end


def both(model, clean, corrupted, answers, receivers, position, freeze_mlps, **options):
    """Scores of the fast and the reference implementation for the same job."""
    common = dict(progress=False, **options)
    fast = path_patch(model, clean, corrupted, answers, receivers, position, freeze_mlps, **common)
    reference = path_patch_reference(model, clean, corrupted, answers, receivers, position, freeze_mlps, **common)
    return fast, reference


def assert_same_scores(fast: torch.Tensor, reference: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    assert fast.shape == reference.shape
    assert torch.equal(fast.isnan(), reference.isnan()), "the two implementations score different heads"
    defined = ~reference.isnan()
    assert defined.any(), "no head was scored"
    # Not a vacuous comparison: the job moves some score well past the tolerance.
    assert reference[defined].abs().max() > 100 * tolerance
    # float32 rounding grows with the score: a batch with a small LD_corrupt - LD_clean gives scores above 1.
    bound = tolerance * max(1.0, reference[defined].abs().max().item())
    difference = (fast[defined] - reference[defined]).abs().max().item()
    assert difference <= bound, f"fast and reference scores differ by up to {difference:.3g}"


def scored_heads(scores: torch.Tensor) -> set[tuple[int, int]]:
    return {(layer, head) for layer, head in (~scores.isnan()).nonzero().tolist()}


# --------------------------------------------------------------------------------------------------------------
# Fast == reference
# --------------------------------------------------------------------------------------------------------------

# Variable lengths in one batch: the shorter prompts are right-padded.
LENGTHS = (9, 7, 11, 8)
# With batch_mean the cases average two batches of 2 prompts, so the mean of batch scores differs from the pooled
# score (the authors' 25 would put these 4 prompts in one batch); a last, shorter batch is tested below.
AVERAGING_BATCH = 2


# (shape, seed, freeze_mlps, averaging): both shapes, both seeds, both MLP settings and both averagings, without
# the full product (the reference costs two bridge passes per sender). Every head is a sender to the logits,
# whatever the sender set.
LOGITS_CASES = [
    ("2L4H64d", 0, False, "pooled"),
    ("2L4H64d", 1, True, "batch_mean"),
    ("3L4H48d", 0, True, "pooled"),
    ("3L4H48d", 1, False, "batch_mean"),
]


@pytest.mark.parametrize(("shape", "seed", "freeze_mlps", "averaging"), LOGITS_CASES)
def test_logits_stage_matches_reference(sharp_model, shape, seed, freeze_mlps, averaging):
    model = sharp_model(shape, seed)
    clean, corrupted, answers, end = make_prompts(model, LENGTHS, seed)
    options = dict(averaging=averaging, averaging_batch_size=AVERAGING_BATCH)
    fast, reference = both(model, clean, corrupted, answers, "logits", None, freeze_mlps, **options)
    assert_same_scores(fast, reference)
    assert not fast.isnan().any(), "to the logits every head is a sender"
    # An explicit END position is the same job as position=None.
    explicit = path_patch(model, clean, corrupted, answers, "logits", end, freeze_mlps, progress=False, **options)
    assert torch.equal(explicit, fast)


# Receivers in one layer.
SINGLE_Q = [(1, 2, "q")]
KEY_VALUE = [(1, 0, "k"), (1, 3, "v")]
SAME_HEAD_ALL = [(1, 0, "q"), (1, 0, "k"), (1, 0, "v"), (1, 1, "q")]
LAST_LAYER_Q = [(2, 1, "q"), (2, 3, "q")]
# Receivers in two layers.
TWO_LAYERS = [(1, 2, "v"), (2, 0, "k")]
MIXED = [(1, 0, "q"), (2, 1, "v"), (2, 2, "k"), (1, 3, "k")]
# Receivers in three layers (of a 4-layer model).
THREE_LAYERS = [(1, 1, "q"), (2, 0, "k"), (3, 2, "v")]
THREE_LAYERS_QUERIES = [(1, 3, "q"), (2, 2, "q"), (3, 0, "q"), (3, 1, "q")]
# (shape, seed, receivers, freeze_mlps, position, sender_set, averaging): receivers in one, two and three layers,
# each with MLPs frozen and not, at END and at an earlier position per prompt, under every sender set and both
# averagings. A query of the last layer at an earlier position cannot reach the logits at END (see the
# known-answer test below), so sets with last-layer queries are compared at END only.
QKV_CASES = [
    ("2L4H64d", 0, SINGLE_Q, False, "END", "authors", "pooled"),
    ("2L4H64d", 1, SINGLE_Q, True, "END", "below_lowest", "batch_mean"),
    ("2L4H64d", 0, KEY_VALUE, True, "earlier", "authors", "batch_mean"),
    ("2L4H64d", 1, KEY_VALUE, False, "END", "any_path", "pooled"),
    ("2L4H64d", 1, SAME_HEAD_ALL, False, "earlier", "below_lowest", "pooled"),
    ("2L4H64d", 0, SAME_HEAD_ALL, True, "END", "authors", "batch_mean"),
    ("3L4H48d", 0, LAST_LAYER_Q, True, "END", "authors", "pooled"),
    ("3L4H48d", 1, TWO_LAYERS, True, "earlier", "authors", "batch_mean"),
    ("3L4H48d", 0, TWO_LAYERS, False, "END", "any_path", "pooled"),
    ("3L4H48d", 0, MIXED, False, "earlier", "any_path", "batch_mean"),
    ("3L4H48d", 1, MIXED, True, "earlier", "below_lowest", "pooled"),
    ("4L4H32d", 0, THREE_LAYERS, False, "earlier", "authors", "pooled"),
    ("4L4H32d", 1, THREE_LAYERS, True, "END", "any_path", "batch_mean"),
    ("4L4H32d", 0, THREE_LAYERS_QUERIES, True, "END", "authors", "batch_mean"),
    ("4L4H32d", 1, THREE_LAYERS_QUERIES, False, "END", "below_lowest", "pooled"),
]


def earlier_positions(end: torch.Tensor) -> torch.Tensor:
    """A different earlier position per prompt (1 to 3 tokens before END), all at or after the corruption."""
    return end - 1 - torch.arange(len(end)) % 3


def corrupt_early(length: int) -> list[int]:
    """Corrupt the second token and one 5 before the end, so earlier patch positions also see a change."""
    return [1, length - 5]


@pytest.mark.parametrize(("shape", "seed", "receivers", "freeze_mlps", "where", "sender_set", "averaging"), QKV_CASES)
def test_qkv_stage_matches_reference(sharp_model, shape, seed, receivers, freeze_mlps, where, sender_set, averaging):
    model = sharp_model(shape, seed)
    clean, corrupted, answers, end = make_prompts(model, LENGTHS, seed, corrupt_at=corrupt_early)
    position = None if where == "END" else earlier_positions(end)
    options = dict(sender_set=sender_set, averaging=averaging, averaging_batch_size=AVERAGING_BATCH)
    fast, reference = both(model, clean, corrupted, answers, receivers, position, freeze_mlps, **options)
    assert_same_scores(fast, reference)
    assert scored_heads(fast) == expected_senders(receivers, model.cfg.n_layers, model.cfg.n_heads, sender_set)


def expected_senders(receivers, n_layers: int, n_heads: int, sender_set: str) -> set[tuple[int, int]]:
    """Each set as the README words it, head by head."""
    receiver_layers = [layer for layer, _, _ in receivers]
    receiver_heads = {(layer, head) for layer, head, _ in receivers}
    heads = {(layer, head) for layer in range(n_layers) for head in range(n_heads)}
    if sender_set == "below_lowest":
        return {(layer, head) for layer, head in heads if layer < min(receiver_layers)}
    if sender_set == "authors":
        return {(layer, head) for layer, head in heads if layer <= min(receiver_layers)} - receiver_heads
    return {(layer, head) for layer, head in heads if layer < max(receiver_layers)} - receiver_heads


def year_like_metric(model, clean, n_tokens: int = 40, seed: int = 0):
    """Greater-Than's metric on random prompts: n_tokens shared answer tokens, the ones the model already favours
    at the clean prompts' END (so the probabilities are not negligible), +1 above a per-prompt cut, -1 up to it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits = model(clean)[:, -1]
    tokens = logits.mean(0).topk(n_tokens).indices.expand(clean.shape[0], n_tokens).clone()
    cut = torch.randint(1, n_tokens - 1, (clean.shape[0], 1), generator=generator)
    weights = torch.where(torch.arange(n_tokens)[None] >= cut, 1.0, -1.0)
    return tokens, weights


PROB_DIFF_CASES = [
    ("2L4H64d", 0, "logits", False),
    ("3L4H48d", 1, "logits", True),
    ("2L4H64d", 1, SAME_HEAD_ALL, False),
    ("3L4H48d", 0, MIXED, True),
    ("4L4H32d", 0, THREE_LAYERS, False),
]


@pytest.mark.parametrize(("shape", "seed", "receivers", "freeze_mlps"), PROB_DIFF_CASES)
def test_probability_difference_matches_reference(sharp_model, shape, seed, receivers, freeze_mlps):
    model = sharp_model(shape, seed)
    clean, corrupted, _, end = make_prompts(model, LENGTHS, seed, corrupt_at=corrupt_early)
    tokens, weights = year_like_metric(model, clean, seed=seed)
    position = None if receivers == "logits" else earlier_positions(end)
    options = dict(metric=ProbabilityDifference(), metric_weights=weights)
    fast, reference = both(model, clean, corrupted, tokens, receivers, position, freeze_mlps, **options)
    assert_same_scores(fast, reference)


def test_the_logit_difference_as_a_metric_is_the_pair_default(sharp_model):
    model = sharp_model("2L4H64d", 0)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 0)
    tokens, weights = pair_tokens(answers)
    for implementation in (path_patch, path_patch_reference):
        default = implementation(model, clean, corrupted, answers, SINGLE_Q, None, progress=False)
        explicit = implementation(
            model, clean, corrupted, tokens, SINGLE_Q, None, progress=False, metric=LogitDifference(),
            metric_weights=weights,
        )  # fmt: skip
        assert torch.equal(default.isnan(), explicit.isnan())
        assert torch.allclose(default.nan_to_num(), explicit.nan_to_num(), atol=1e-6)


def test_sender_sets_of_receivers_in_two_layers():
    """Hand-listed: q of 1.1 and 3.2 in a 4-layer, 3-head model."""
    receivers = [(1, 1, "q"), (3, 2, "q")]
    assert sender_heads(receivers, 4, 3, "below_lowest") == ((0, 0), (0, 1), (0, 2))
    assert sender_heads(receivers, 4, 3, "authors") == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2))
    assert sender_heads(receivers, 4, 3, "any_path") == (
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)
    )  # fmt: skip
    for sender_set in SENDER_SETS:
        assert len(sender_heads("logits", 4, 3, sender_set)) == 12
    with pytest.raises(ValueError, match="sender_set must be one of"):
        sender_heads(receivers, 4, 3, "everything")


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_senders_in_the_only_receiver_layer_score_exactly_zero(sharp_model, implementation):
    """A head reads its layer's residual stream before any head of that layer writes to it, so with every receiver
    in layer 2, the authors' senders in layer 2 change nothing: exactly 0, as the authors' loop computes. A
    sender's score does not depend on which other heads are senders."""
    model = sharp_model("3L4H48d", 0)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 2, corrupt_at=corrupt_early)
    authors = implementation(model, clean, corrupted, answers, LAST_LAYER_Q, None, progress=False)
    assert scored_heads(authors) == {(layer, head) for layer in range(3) for head in range(4)} - {(2, 1), (2, 3)}
    assert torch.equal(authors[2, [0, 2]], torch.zeros(2, dtype=torch.float64))
    below = implementation(
        model, clean, corrupted, answers, LAST_LAYER_Q, None, sender_set="below_lowest", progress=False
    )
    assert torch.allclose(below[:2], authors[:2], rtol=0, atol=TOLERANCE)
    assert below[:2].abs().max() > 100 * TOLERANCE


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_senders_in_the_lowest_of_two_receiver_layers_reach_the_higher_one(sharp_model, implementation):
    """Receivers in layers 1 and 2: the authors' senders in layer 1 reach the layer-2 receivers and score as much
    as with the layer-1 receivers left out (their path to those is none); any_path adds the heads of layer 1
    and scores the rest the same."""
    model = sharp_model("3L4H48d", 1)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 3, corrupt_at=corrupt_early)
    authors = implementation(model, clean, corrupted, answers, TWO_LAYERS, None, progress=False)
    assert authors[1, [0, 1, 3]].abs().max() > 100 * TOLERANCE
    upper_only = implementation(
        model, clean, corrupted, answers, [(2, 0, "k")], None, senders=[(1, 0), (1, 1), (1, 3)], progress=False
    )
    assert torch.allclose(authors[1, [0, 1, 3]], upper_only[1, [0, 1, 3]], rtol=0, atol=TOLERANCE)
    any_path = implementation(model, clean, corrupted, answers, TWO_LAYERS, None, sender_set="any_path", progress=False)
    assert torch.equal(authors.isnan(), any_path.isnan())  # the highest receiver layer is the lowest + 1 here
    assert torch.allclose(authors, any_path, rtol=0, atol=TOLERANCE, equal_nan=True)


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_batch_mean_is_the_mean_of_each_batchs_pooled_score(sharp_model, implementation):
    """The authors' averaging against its definition: pooled scores of each batch of 3 prompts (3, 3, 1), averaged
    with equal weight. With one batch covering every prompt it is the pooled score."""
    model = sharp_model("3L4H48d", 0)
    lengths = (9, 7, 11, 8, 10, 12, 7)
    clean, corrupted, answers, end = make_prompts(model, lengths, 4, corrupt_at=corrupt_early)
    position = earlier_positions(end)
    common = dict(sender_set="any_path", progress=False)

    def run(rows, **options):
        return implementation(
            model, clean[rows], corrupted[rows], answers[rows], MIXED, position[rows], True, **common, **options
        )

    batch_mean = run(slice(None), averaging="batch_mean", averaging_batch_size=3)
    per_batch = [run(slice(start, start + 3), averaging="pooled") for start in (0, 3, 6)]
    expected = torch.stack(per_batch).mean(dim=0)
    assert torch.allclose(batch_mean, expected, rtol=0, atol=TOLERANCE, equal_nan=True)
    pooled = run(slice(None), averaging="pooled")
    assert (batch_mean - pooled).abs().nan_to_num().max() > 100 * TOLERANCE, "the two averagings differ here"
    one_batch = run(slice(None), averaging="batch_mean", averaging_batch_size=len(lengths))
    assert torch.allclose(one_batch, pooled, rtol=0, atol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------------------------------------------
# Batch size, chunking and sender subsets change nothing
# --------------------------------------------------------------------------------------------------------------

BATCH_CASES = {
    "logits": ("logits", None),
    "qv_earlier": ([(2, 0, "q"), (2, 2, "v")], "earlier"),
    "kv_end": ([(1, 1, "k"), (2, 3, "v")], None),
}


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_scores_do_not_depend_on_batch_size_or_chunking(sharp_model, case):
    model = sharp_model("3L4H48d", 1)
    receivers, where = BATCH_CASES[case]
    lengths = (9, 7, 11, 8, 10, 12, 7)
    clean, corrupted, answers, end = make_prompts(model, lengths, 3, corrupt_at=corrupt_early)
    position = None if where is None else earlier_positions(end)

    # The score averages batches of 3 prompts (7 = 3 + 3 + 1) whatever batches the prompts are computed in.
    scoring = dict(averaging="batch_mean", averaging_batch_size=3, progress=False)

    def fast(**options):
        return path_patch(model, clean, corrupted, answers, receivers, position, **scoring, **options)

    whole = fast(batch_size=len(lengths))
    # float32 rounding grows with the scores, which reach 2.7 here: batches of one prompt moved them by up to
    # 1.1e-5 on one processor (AMD EPYC). The bound is 1e-5 times the largest score, and at least 1e-5.
    rounding = 1e-5 * max(1.0, whole[~whole.isnan()].abs().max().item())
    # Batches of uneven size, one sender per pass, and both at once.
    for options in ({"batch_size": 3}, {"batch_size": 1}, {"sender_chunk": 1}, {"batch_size": 2, "sender_chunk": 3}):
        other = fast(**options)
        assert torch.equal(other.isnan(), whole.isnan())
        assert torch.allclose(other, whole, rtol=0, atol=rounding, equal_nan=True), options
    # The reference in other uneven batches too, on a few of the authors' senders (it is slow): the same scores.
    eligible = sender_heads(receivers, 3, 4)
    chosen = [sender for sender in [(0, 1), (0, 3), (1, 2), (2, 1)] if sender in eligible]
    reference = path_patch_reference(
        model, clean, corrupted, answers, receivers, position, senders=chosen, batch_size=2, **scoring
    )
    subset = torch.full_like(whole, float("nan"))
    for layer, head in chosen:
        subset[layer, head] = whole[layer, head]
    assert_same_scores(subset, reference)


def test_sender_subset_scores_those_heads_only(sharp_model):
    model = sharp_model("3L4H48d", 0)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 5)
    full = path_patch(model, clean, corrupted, answers, "logits", None, progress=False)
    chosen = [(2, 3), (0, 1), (1, 0)]
    subset = path_patch(model, clean, corrupted, answers, "logits", None, senders=chosen, progress=False)
    reference = path_patch_reference(model, clean, corrupted, answers, "logits", None, senders=chosen, progress=False)
    mask = torch.zeros_like(full, dtype=torch.bool)
    for layer, head in chosen:
        mask[layer, head] = True
    assert subset[~mask].isnan().all()
    assert torch.allclose(subset[mask], full[mask], rtol=0, atol=1e-5)
    assert_same_scores(subset, reference)


# --------------------------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_corruption_after_the_patch_position_scores_zero(sharp_model, implementation):
    """If the prompts differ only after p, no head's output at p changes (attention is causal), so patching any
    sender at p changes nothing: every score is exactly 0 while LD_corrupt != LD_clean keeps it defined."""
    model = sharp_model("3L4H48d", 0)
    clean, corrupted, answers, end = make_prompts(model, LENGTHS, 2, corrupt_at=lambda n: [n - 1])
    position = end - 1
    receivers = [(2, 0, "q"), (1, 1, "k")]
    scores = implementation(
        model, clean, corrupted, answers, receivers, position, sender_set="any_path", progress=False
    )
    assert scored_heads(scores) == expected_senders(receivers, 3, 4, "any_path")
    assert (scores[~scores.isnan()] == 0).all()


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_last_layer_query_at_an_earlier_position_scores_zero(sharp_model, implementation):
    """The logit difference is read at END. A last-layer query at p < END only moves the residual stream at p
    after the last attention, which no later position reads: every score is exactly 0."""
    model = sharp_model("3L4H48d", 0)
    clean, corrupted, answers, end = make_prompts(model, LENGTHS, 2, corrupt_at=corrupt_early)
    scores = implementation(model, clean, corrupted, answers, LAST_LAYER_Q, end - 1, progress=False)
    assert scored_heads(scores) == expected_senders(LAST_LAYER_Q, 3, 4, "authors")
    assert (scores[~scores.isnan()] == 0).all()


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_identical_clean_and_corrupted_prompts_give_undefined_scores(make_model, implementation):
    """clean == corrupted: LD_corrupt - LD_clean = 0, so the score 0 / 0 is NaN, with a warning saying why."""
    model = make_model(seed=0, **SHAPES["2L4H64d"])
    clean, _, answers, _ = make_prompts(model, LENGTHS, 4)
    with pytest.warns(RuntimeWarning, match="same on clean and corrupted"):
        scores = implementation(model, clean, clean.clone(), answers, "logits", None, progress=False)
    assert scores.isnan().all()


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_only_head_of_a_one_layer_model_carries_the_whole_effect(make_model, implementation):
    """One layer, one head, MLP not frozen, corruption before END: patching the only head at END gives END the
    corrupted run's residual stream exactly (same token and position there, corrupted attention output, and the
    MLP responds as in the corrupted run), so LD_patched = LD_corrupt and the score is 1."""
    model = make_model(n_layer=1, n_head=1, n_embd=64, seed=0)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 6, corrupt_at=lambda n: [0, n - 3])
    scores = implementation(model, clean, corrupted, answers, "logits", None, False, progress=False)
    assert scores.shape == (1, 1)
    assert abs(scores.item() - 1.0) <= TOLERANCE


# --------------------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------------------


def _bad_inputs(model):
    """(name, arguments as a dict, expected message) for inputs both implementations must refuse."""
    clean, corrupted, answers, end = make_prompts(model, (6, 5, 6), 0)
    good = {
        "clean_tokens": clean,
        "corrupted_tokens": corrupted,
        "answer_tokens": answers,
        "receivers": [(1, 0, "q")],
        "position": None,
    }
    vocab = model.cfg.d_vocab
    out_of_vocab = clean.clone()
    out_of_vocab[0, 0] = vocab
    negative = corrupted.clone()
    negative[1, 0] = -1
    cases = [
        ("component", {"receivers": [(1, 0, "z")]}, "component must be one of q, k, v"),
        ("receiver string", {"receivers": "resid"}, "receivers must be 'logits'"),
        ("receiver layer", {"receivers": [(5, 0, "q")]}, r"layer must be an int in \[0, 2\)"),
        ("receiver head", {"receivers": [(1, 4, "q")]}, r"head must be an int in \[0, 4\)"),
        ("receiver tuple", {"receivers": [(1, 0)]}, "each receiver must be"),
        ("no receivers", {"receivers": []}, "receivers is empty"),
        ("answers 1d", {"answer_tokens": answers[:, 0]}, r"answer_tokens must have shape \[batch, 2\]"),
        ("answers 3 columns", {"answer_tokens": torch.zeros(3, 3, dtype=torch.long)}, "shape"),
        ("answers rows", {"answer_tokens": answers[:2]}, r"= \(3, 2\)"),
        ("answers vocab", {"answer_tokens": torch.full((3, 2), vocab)}, "answer_tokens must be token ids"),
        ("answers float", {"answer_tokens": answers.float()}, "must hold integers"),
        ("clean vocab", {"clean_tokens": out_of_vocab}, "clean_tokens must be token ids"),
        ("corrupted negative", {"corrupted_tokens": negative}, "corrupted_tokens must be token ids"),
        ("tokens list", {"clean_tokens": clean.tolist()}, "must be a torch LongTensor"),
        ("tokens 1d", {"clean_tokens": clean[0], "corrupted_tokens": corrupted[0]}, r"shape \[batch, seq\]"),
        ("shapes differ", {"corrupted_tokens": corrupted[:, :-1]}, "must have the same shape"),
        ("lengths differ", {"corrupted_tokens": _lengthen(model, corrupted, row=1)}, "real tokens clean but"),
        ("position beyond END", {"position": end + 1}, "beyond prompt"),
        ("position negative", {"position": -1}, "must be >= 0"),
        ("position shape", {"position": torch.tensor([1, 2])}, r"shape \[batch\]"),
        ("logits not at END", {"receivers": "logits", "position": end - 1}, "position must be that token"),
        ("freeze not bool", {"freeze_mlps": 1}, "freeze_mlps must be True or False"),
    ]
    return good, cases


def _lengthen(model, tokens, row):
    """The same tokens with one more real token at the end of a padded prompt."""
    longer = tokens.clone()
    pad = model.tokenizer.pad_token_id
    first_pad = (longer[row] == pad).nonzero().flatten()[0]
    longer[row, first_pad] = 7
    return longer


BAD_INPUT_NAMES = [
    "component",
    "receiver string",
    "receiver layer",
    "receiver head",
    "receiver tuple",
    "no receivers",
    "answers 1d",
    "answers 3 columns",
    "answers rows",
    "answers vocab",
    "answers float",
    "clean vocab",
    "corrupted negative",
    "tokens list",
    "tokens 1d",
    "shapes differ",
    "lengths differ",
    "position beyond END",
    "position negative",
    "position shape",
    "logits not at END",
    "freeze not bool",
]


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
def test_good_inputs_of_the_validation_cases_are_accepted(make_model, implementation):
    """Each refusal below changes one argument of these, so it is that argument the message is about."""
    model = make_model(**SHAPES["2L4H64d"])
    good, cases = _bad_inputs(model)
    assert sorted(name for name, _, _ in cases) == sorted(BAD_INPUT_NAMES)
    scores = implementation(model, **good, progress=False)
    assert scored_heads(scores) == expected_senders(good["receivers"], 2, 4, "authors")


@pytest.mark.parametrize("implementation", [path_patch, path_patch_reference])
@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_inputs_are_refused_with_a_clear_message(make_model, implementation, name):
    model = make_model(**SHAPES["2L4H64d"])
    good, cases = _bad_inputs(model)
    change, message = next((change, message) for case, change, message in cases if case == name)
    with pytest.raises(ValueError, match=message):
        implementation(model, **{**good, **change}, progress=False)


@pytest.mark.parametrize(
    ("senders", "sender_set", "message"),
    [
        ([(1, 0)], "authors", r"sender \(1, 0\) is not in the sender set 'authors'"),
        ([(1, 1)], "below_lowest", "not in the sender set 'below_lowest' .*layers below the lowest receiver layer"),
        ([(0, 9)], "authors", r"sender \(0, 9\) is not in"),
        ([(0,)], "authors", "each sender"),
        ([(0, 0)], "all", "sender_set must be one of authors, any_path, below_lowest"),
    ],
)
def test_bad_senders_are_refused(make_model, senders, sender_set, message):
    model = make_model(**SHAPES["2L4H64d"])
    clean, corrupted, answers, _ = make_prompts(model, (6, 6), 0)
    for implementation in (path_patch, path_patch_reference):
        with pytest.raises(ValueError, match=message):
            implementation(
                model, clean, corrupted, answers, [(1, 0, "q")], None, senders=senders, sender_set=sender_set,
                progress=False,
            )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 0),
        ("sender_chunk", 0),
        ("batch_size", 2.5),
        ("averaging_batch_size", 0),
        ("averaging_batch_size", True),
        ("averaging", "median"),
    ],
)
def test_bad_batching_options_are_refused(make_model, option, value):
    model = make_model(**SHAPES["2L4H64d"])
    clean, corrupted, answers, _ = make_prompts(model, (6, 6), 0)
    with pytest.raises(ValueError, match=option):
        path_patch(model, clean, corrupted, answers, "logits", None, progress=False, **{option: value})


def test_no_warning_on_a_well_defined_job(make_model):
    model = make_model(**SHAPES["2L4H64d"])
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        path_patch(model, clean, corrupted, answers, "logits", None, progress=False)
