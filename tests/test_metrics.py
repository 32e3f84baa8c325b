"""The metrics on hand-built logits whose answers are known."""

import math

import pytest
import torch

from circuit_reuse.metrics import LogitDifference, ProbabilityDifference, metric_by_name, pair_tokens


def test_logit_difference_of_answer_and_wrong():
    logits = torch.tensor([[0.0, 2.0, -1.0, 0.5], [1.0, 0.0, 3.0, 0.0]])
    tokens, weights = pair_tokens(torch.tensor([[1, 2], [2, 0]]))
    assert LogitDifference()(logits, tokens, weights).tolist() == [3.0, 2.0]
    stacked = torch.stack([logits, -logits])  # leading dimensions (e.g. senders) are kept
    assert LogitDifference()(stacked, tokens, weights).tolist() == [[3.0, 2.0], [-3.0, -2.0]]


def test_probability_difference_over_token_sets():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    tokens = torch.tensor([[2, 3, 0, 1]])
    weights = torch.tensor([[1.0, 1.0, -1.0, 0.0]])  # {2, 3} right, {0} wrong, token 1 padding
    value = ProbabilityDifference()(logits, tokens, weights)
    assert value.item() == pytest.approx(0.3 + 0.4 - 0.1)
    shifted = ProbabilityDifference()(logits + 5.0, tokens, weights)  # a softmax ignores a constant shift
    assert shifted.item() == pytest.approx(value.item())
    assert not ProbabilityDifference().linear and LogitDifference().linear


def test_metrics_by_name():
    assert metric_by_name("logit_diff") == LogitDifference() and metric_by_name("prob_diff") == ProbabilityDifference()
    with pytest.raises(ValueError, match="unknown metric 'kl'"):
        metric_by_name("kl")
    assert math.isclose(ProbabilityDifference()(torch.zeros(1, 2), torch.tensor([[0, 1]]), torch.ones(1, 2)).item(), 1)
