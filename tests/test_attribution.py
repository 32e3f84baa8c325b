"""Attribution patching (EAP, EAP-IG) against exact path patching, on cases whose answers are known.

- Where the metric is linear in a sender's output (a hand-built model whose layer norms act linearly and whose
  MLPs write nothing, read at the logits or at last-layer values) the first-order estimate is the effect itself,
  so EAP equals the literal recipe (`path_patch_reference`) to float64 rounding, and so does EAP-IG at the logits.
- On a random model with sharp attention and working MLPs, a corruption of size epsilon (corrupted tokens whose
  embeddings differ from the clean ones by epsilon) leaves EAP an error of order epsilon relative to the score.
- EAP-IG's midpoint rule converges in ig_steps at its textbook rate, 1 / ig_steps^2.
- Both keep the exact scores' sender sets, NaNs and exact zeros, and do not depend on how prompts are batched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_patching import LENGTHS, make_prompts

from circuit_reuse.attribution import METHODS, attribution_patch, method_description, score_heads
from circuit_reuse.discovery import StageError, parse_stages
from circuit_reuse.method_comparison import compare_grids, comparison_tables
from circuit_reuse.models import ModelSpec, cache_model, load_model
from circuit_reuse.patching import path_patch, path_patch_reference

# float64 models: the estimates and the recipe agree to rounding where the effect is linear.
LINEAR_TOLERANCE = 1e-10


def _float64_model(tmp_path_factory, tokenizer_dir, overrides, seed=0):
    spec = ModelSpec(name="m", source="random", overrides={"n_positions": 64, **overrides}, seed=seed)
    dest = tmp_path_factory.mktemp("attribution") / "m"
    cache_model(spec, dest, tokenizer_dir=tokenizer_dir)
    return load_model(dest, device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory, tokenizer_dir):
    """2 layers x 4 heads whose path from any head's output to the logits is linear.

    A layer norm divides by sqrt(variance + epsilon); with epsilon 1e12 against variances near 1 that is
    1e6 to a part in 1e12, and weights scaled by 1e6 make each norm x - mean(x) (times the random weights):
    linear. Zero MLP output weights leave each MLP its bias, a constant. What remains between a head's output
    and the logit difference is linear, except attention patterns, which a value receiver in the last layer
    does not move."""
    model = _float64_model(
        tmp_path_factory,
        tokenizer_dir,
        {"n_layer": 2, "n_head": 4, "n_embd": 32, "initializer_range": 0.2, "layer_norm_epsilon": 1e12},
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                parameter.mul_(1e6)
            if ".c_proj." in name and name.endswith("weight"):
                parameter.zero_()
    return model


SMOOTH = {"n_layer": 3, "n_head": 4, "n_embd": 48, "initializer_range": 0.2}


@pytest.fixture(scope="module")
def smooth_model(tmp_path_factory, tokenizer_dir):
    """A 3-layer random model with sharp attention and working MLPs, in float64."""
    return _float64_model(tmp_path_factory, tokenizer_dir, SMOOTH, seed=1)


@pytest.fixture(scope="module")
def near_model(tmp_path_factory, tokenizer_dir):
    """The same shape, its own copy: `_near_corruption` rewrites some of its token embeddings."""
    return _float64_model(tmp_path_factory, tokenizer_dir, SMOOTH, seed=1)


def _scores(model, method, clean, corrupted, answers, receivers, position, freeze_mlps=False, **options):
    if method == "reference":
        return path_patch_reference(
            model, clean, corrupted, answers, receivers, position, freeze_mlps, progress=False, **options
        )
    return attribution_patch(
        model, clean, corrupted, answers, receivers, position, freeze_mlps, method=method, progress=False, **options
    )


def _assert_close(estimate, exact, tolerance):
    assert torch.equal(estimate.isnan(), exact.isnan()), "the two score different heads"
    defined = ~exact.isnan()
    assert exact[defined].abs().max() > 1e-3, "a vacuous case: no sender moves the metric"
    error = (estimate[defined] - exact[defined]).abs().max().item()
    assert error <= tolerance, f"estimates differ from the exact scores by up to {error:.3g}"


# --------------------------------------------------------------------------------------------------------------
# Linear: the estimate is the effect
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "receivers, where, averaging",
    [
        ("logits", "end", "batch_mean"),
        ("logits", "end", "pooled"),
        ([(1, 1, "v"), (1, 3, "v")], "end", "batch_mean"),
        ([(1, 2, "v")], "before_end", "pooled"),  # a value read two tokens before END, attended to from END
    ],
)
def test_eap_equals_the_exact_scores_where_the_metric_is_linear_in_the_sender(
    linear_model, receivers, where, averaging
):
    clean, corrupted, answers, end = make_prompts(linear_model, LENGTHS, 0)
    position = None if receivers == "logits" else (end if where == "end" else end - 2)
    options = {"averaging": averaging, "averaging_batch_size": 2}
    exact = _scores(linear_model, "reference", clean, corrupted, answers, receivers, position, **options)
    eap = _scores(linear_model, "eap", clean, corrupted, answers, receivers, position, **options)
    _assert_close(eap, exact, LINEAR_TOLERANCE)


@pytest.mark.parametrize("ig_steps", [1, 3])
def test_eap_ig_equals_the_exact_scores_at_the_logits_of_a_linear_model(linear_model, ig_steps):
    """The gradient is the same at every point of the line, so any number of points gives the effect."""
    clean, corrupted, answers, _ = make_prompts(linear_model, LENGTHS, 1)
    exact = _scores(linear_model, "reference", clean, corrupted, answers, "logits", None)
    eap_ig = _scores(linear_model, "eap_ig", clean, corrupted, answers, "logits", None, ig_steps=ig_steps)
    _assert_close(eap_ig, exact, LINEAR_TOLERANCE)


def test_a_query_receiver_is_not_linear_and_eap_is_only_close(linear_model):
    """A query changes its head's attention pattern (a softmax), so the estimate is not the effect: the linear
    cases above pass because the linearity is real, not because the estimate ignores the model."""
    clean, corrupted, answers, end = make_prompts(linear_model, LENGTHS, 0)
    exact = _scores(linear_model, "reference", clean, corrupted, answers, [(1, 1, "q")], end)
    eap = _scores(linear_model, "eap", clean, corrupted, answers, [(1, 1, "q")], end)
    defined = ~exact.isnan()
    error = (eap[defined] - exact[defined]).abs().max().item()
    assert 1e3 * LINEAR_TOLERANCE < error < 0.1 * exact[defined].abs().max().item()


# --------------------------------------------------------------------------------------------------------------
# Nonlinear: first order in the size of the corruption
# --------------------------------------------------------------------------------------------------------------


def _near_corruption(model, epsilon, seed=3):
    """Prompts whose corrupted tokens embed epsilon away from the clean ones: token id + 1 per corrupted token,
    with that token's embedding set to the clean token's plus epsilon times a fixed random direction."""
    clean, _, answers, end = make_prompts(model, LENGTHS, seed)
    corrupted = clean.clone()
    embedding = dict(model.named_parameters())["transformer.wte._original_component.weight"]
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(embedding.shape[1], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        for i, length in enumerate(LENGTHS):
            for at in (length - 3, length - 2):
                token = int(clean[i, at])
                corrupted[i, at] = token + 1
                embedding[token + 1] = embedding[token] + epsilon * direction
    return clean, corrupted, answers, end


@pytest.mark.parametrize(
    "receivers, where, freeze_mlps",
    [
        ("logits", "end", False),
        ([(2, 0, "q"), (2, 3, "q")], "end", False),
        ([(1, 1, "k"), (2, 2, "v")], "before_end", True),
    ],
)
def test_eaps_error_shrinks_with_the_corruption_at_first_order(near_model, receivers, where, freeze_mlps):
    """The score is a ratio of two effects of order epsilon; EAP drops the second-order term of the numerator,
    so its error relative to the largest score falls tenfold when epsilon does."""
    relative_errors = []
    for epsilon in (1e-2, 1e-3):
        clean, corrupted, answers, end = _near_corruption(near_model, epsilon)
        position = None if receivers == "logits" else (end if where == "end" else end - 2)
        exact = _scores(near_model, "reference", clean, corrupted, answers, receivers, position, freeze_mlps)
        eap = _scores(near_model, "eap", clean, corrupted, answers, receivers, position, freeze_mlps)
        defined = ~exact.isnan()
        scale = exact[defined].abs().max().item()
        assert scale > 1e-3, "a vacuous case"
        relative_errors.append((eap[defined] - exact[defined]).abs().max().item() / scale)
    assert relative_errors[0] < 0.2, relative_errors
    assert 5 < relative_errors[0] / relative_errors[1] < 20, relative_errors


def test_eap_ig_converges_in_its_steps_at_the_midpoint_rules_rate(smooth_model):
    """The midpoint rule's error falls as 1 / ig_steps^2: past a few steps, each doubling divides the change of
    the estimate by about 4 (from 2 to 4 steps it fell twelvefold here, before the asymptotic rate)."""
    clean, corrupted, answers, end = make_prompts(smooth_model, LENGTHS, 4)
    receivers = [(2, 1, "q"), (2, 3, "v")]
    estimates = {
        steps: _scores(smooth_model, "eap_ig", clean, corrupted, answers, receivers, end, ig_steps=steps)
        for steps in (4, 8, 16, 32)
    }
    defined = ~estimates[4].isnan()
    changes = [(estimates[2 * s] - estimates[s])[defined].abs().max().item() for s in (4, 8, 16)]
    assert changes[0] > 1e-6, "a vacuous case: the estimate does not depend on the steps"
    for coarse, fine in zip(changes, changes[1:], strict=False):
        assert 3 < coarse / fine < 5, changes


# --------------------------------------------------------------------------------------------------------------
# The exact scores' conventions
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_senders_in_the_only_receiver_layer_score_exactly_zero_and_others_nan(smooth_model, method):
    clean, corrupted, answers, end = make_prompts(smooth_model, LENGTHS, 5)
    receivers = [(1, 1, "q"), (1, 3, "v")]
    for sender_set in ("authors", "any_path", "below_lowest"):
        exact = path_patch(
            smooth_model, clean, corrupted, answers, receivers, end, sender_set=sender_set, progress=False
        )
        estimate = _scores(smooth_model, method, clean, corrupted, answers, receivers, end, sender_set=sender_set)
        assert torch.equal(estimate.isnan(), exact.isnan()), sender_set
    authors = _scores(smooth_model, method, clean, corrupted, answers, receivers, end)
    assert torch.equal(authors[1, [0, 2]], torch.zeros(2, dtype=torch.float64))
    assert (authors[0] != 0).all()


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_scores_do_not_depend_on_how_prompts_are_batched(smooth_model, method):
    clean, corrupted, answers, end = make_prompts(smooth_model, LENGTHS, 6)
    whole = _scores(smooth_model, method, clean, corrupted, answers, [(2, 0, "k")], end - 1, batch_size=4)
    split = _scores(smooth_model, method, clean, corrupted, answers, [(2, 0, "k")], end - 1, batch_size=3)
    defined = ~whole.isnan()
    assert (whole[defined] - split[defined]).abs().max() < 1e-12


def test_score_heads_dispatches_on_the_method(smooth_model):
    clean, corrupted, answers, _ = make_prompts(smooth_model, LENGTHS, 7)
    arguments = (smooth_model, clean, corrupted, answers, "logits", None)
    exact = score_heads(*arguments, method="exact", progress=False)
    assert torch.equal(exact, path_patch(*arguments, progress=False))
    eap_ig = score_heads(*arguments, method="eap_ig", ig_steps=2, progress=False)
    assert torch.equal(eap_ig, attribution_patch(*arguments, method="eap_ig", ig_steps=2, progress=False))
    with pytest.raises(ValueError, match="method must be one of exact, eap, eap_ig"):
        score_heads(*arguments, method="acdc")
    with pytest.raises(ValueError, match="ig_steps must be a positive int"):
        attribution_patch(*arguments, method="eap_ig", ig_steps=0)
    with pytest.raises(ValueError, match="method must be 'eap' or 'eap_ig'"):
        attribution_patch(*arguments, method="exact")
    assert [method_description(m, 5) for m in METHODS] == ["exact", "eap", "eap_ig of 5 steps"]


# --------------------------------------------------------------------------------------------------------------
# Stages and the comparison tables
# --------------------------------------------------------------------------------------------------------------


STAGES = [
    {"name": "movers", "receivers": "logits"},
    {"name": "inhibition", "receivers": {"stage": "movers", "components": ["q"]}, "position": "END", "method": "eap"},
    {
        "name": "induction",
        "receivers": {"stage": "inhibition", "components": ["k", "v"]},
        "position": "S2",
        "method": "eap_ig",
        "ig_steps": 9,
    },
]


def test_a_stage_takes_the_discovery_method_unless_it_names_its_own():
    specs = parse_stages("ioi", STAGES, method="eap_ig", ig_steps=3)
    assert [(s.method, s.ig_steps) for s in specs] == [("eap_ig", 3), ("eap", None), ("eap_ig", 9)]
    exact = parse_stages("ioi", STAGES[:1])
    assert (exact[0].method, exact[0].ig_steps) == ("exact", None)
    with pytest.raises(StageError, match=r"discovery.stages.ioi\[0\].method: 'eap2' is not one of exact, eap, eap_ig"):
        parse_stages("ioi", [{**STAGES[0], "method": "eap2"}])


def test_compare_grids_on_hand_built_scores():
    exact = np.array([[0.5, -0.4, 0.1], [0.05, np.nan, 0.0]])
    approximate = np.array([[0.45, 0.1, -0.38], [0.06, np.nan, 0.0]])
    found = compare_grids(exact, approximate, {"top_percent": 40})  # 2 of 5 senders
    assert found["n_senders"] == 5 and found["k"] == 2
    assert found["recall"] == 0.5
    assert (found["only_exact"], found["only_approx"]) == ("0.1", "0.2")
    assert found["max_abs_error"] == pytest.approx(0.5)
    # Ranks of the five senders: exact (5, 1, 4, 3, 2), approximate (5, 4, 1, 3, 2); sum d^2 = 18.
    assert found["spearman"] == pytest.approx(1 - 6 * 18 / (5 * 24))


def test_comparison_tables_set_each_approximation_beside_the_exact_scores():
    exact = np.array([[0.5, -0.4], [0.1, 0.2]])
    grids = {"movers": {"exact": exact, "eap": exact * 0.9, "eap_ig": exact[::-1]}}
    per_head, summary = comparison_tables("m", "ioi", grids, {"movers": "logits"}, {"top_percent": 25})
    assert list(summary["method"]) == ["eap", "eap_ig"]
    assert list(summary["recall"]) == [1.0, 0.0]
    assert len(per_head) == 8 and set(per_head["method"]) == {"eap", "eap_ig"}
    eap = per_head[per_head["method"] == "eap"]
    np.testing.assert_allclose(eap["score"], 0.9 * eap["exact_score"])
    assert eap.loc[eap["selected_exact"], ["layer", "head"]].values.tolist() == [[0, 0]]
