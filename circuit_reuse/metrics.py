"""A task's metric: one number per prompt from the logits at its END position.

Every metric here is a signed sum over a few answer tokens per prompt,

    metric = sum_k weight[k] * f(logits)[token[k]]

with `tokens` and `weights` ([n, k] each) carried by the dataset (`TaskDataset.metric_tokens`,
`metric_weights`) and f fixed by the metric:

- `LogitDifference` (IOI, Colored Objects, World Capitals): f is the identity, tokens (answer, wrong) and
  weights (+1, -1), so the metric is logit(answer) - logit(wrong).
- `ProbabilityDifference` (Greater-Than): f is the softmax over the whole vocabulary, tokens a set of
  answers with +1 (right) or -1 (wrong), so the metric is P(right set) - P(wrong set).

Tokens with weight 0 pad rows of different lengths. Positive weights mark the tokens that answer the clean
prompt, negative ones those that answer the corrupted prompt: evaluation reads accuracy from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METRIC_NAMES = ("logit_diff", "prob_diff")


@dataclass(frozen=True)
class Metric:
    """Base of the two metrics; `name` is what tables record, `label` what figures print."""

    name: str
    label: str

    @property
    def linear(self) -> bool:
        """Whether the metric is a fixed linear function of the logits (so of the final residual stream)."""
        raise NotImplementedError

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """f(logits) over the last (vocabulary) dimension."""
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The metric of each prompt: logits [..., n, d_vocab], tokens and weights [n, k] -> [..., n]."""
        values = self.transform(logits)
        index = tokens.to(values.device).expand(*values.shape[:-1], tokens.shape[-1])
        picked = values.gather(-1, index)
        return (picked * weights.to(device=values.device, dtype=values.dtype)).sum(-1)


@dataclass(frozen=True)
class LogitDifference(Metric):
    name: str = "logit_diff"
    label: str = "logit difference (answer - wrong)"

    @property
    def linear(self) -> bool:
        return True

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


@dataclass(frozen=True)
class ProbabilityDifference(Metric):
    name: str = "prob_diff"
    label: str = "probability difference (right - wrong answers)"

    @property
    def linear(self) -> bool:
        return False

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def metric_by_name(name: str) -> Metric:
    """The metric a table or dataset meta names ("logit_diff" or "prob_diff")."""
    metrics = {"logit_diff": LogitDifference(), "prob_diff": ProbabilityDifference()}
    if name not in metrics:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)}")
    return metrics[name]


def pair_tokens(answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric tokens and weights of the logit difference from (answer, wrong) pairs [n, 2]."""
    weights = torch.tensor([1.0, -1.0]).expand(answers.shape[0], 2).clone()
    return answers.clone(), weights
