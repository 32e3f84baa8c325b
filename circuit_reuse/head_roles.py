"""Evidence about what each attention head does, and the rules that turn it into a role label.

- Detector scores on repeated random token sequences (a random sequence of T tokens followed by the
  same T tokens): previous-token (attention from i to i-1), duplicate-token (from a token in the second
  half to its first occurrence, i-T) and induction (to the token after its first occurrence, i-T+1).
- Each head's OV circuit on a task's answer tokens (`ov_answer_logits`): a token's representation after
  layer 0 is passed through the head's value and output weights and the final LayerNorm and unembedding,
  giving an [answer x answer] logit matrix per head; the copy score is the fraction of answer tokens that
  come out as the largest logit among the answer tokens, the negative copy score the fraction that come
  out as the smallest.
- Attention shares: how much of a head's attention from one role goes to given positions of the prompt.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuit_reuse.circuits import Head
from circuit_reuse.hook_names import attention_pattern, residual_post
from circuit_reuse.models import model_device
from circuit_reuse.weights import ModelWeights

DETECTORS = ("previous_token", "duplicate_token", "induction")
# A head is labelled by a detector only when at least this share of its attention follows the pattern.
DETECTOR_MIN_SCORE = 0.1


@torch.no_grad()
def detector_scores(model, seq_len: int = 40, n_sequences: int = 16, seed: int = 0) -> pd.DataFrame:
    """Previous-token, duplicate-token and induction scores of every head, one row per head."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    generator = torch.Generator().manual_seed(seed)
    # Avoid the lowest ids (bytes and punctuation) so the sequences look like ordinary text tokens.
    half = torch.randint(1000, model.cfg.d_vocab - 1000, (n_sequences, seq_len), generator=generator)
    tokens = torch.cat([half, half], dim=1).to(model_device(model))
    names = {attention_pattern(l) for l in range(n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    second = torch.arange(seq_len, 2 * seq_len)
    rows = []
    for l in range(n_layers):
        pattern = cache[attention_pattern(l)].float().cpu()  # [batch, head, query, key]
        previous = pattern[:, :, torch.arange(1, 2 * seq_len), torch.arange(0, 2 * seq_len - 1)].mean(dim=(0, 2))
        duplicate = pattern[:, :, second, second - seq_len].mean(dim=(0, 2))
        induction = pattern[:, :, second[:-1], second[:-1] - seq_len + 1].mean(dim=(0, 2))
        for h in range(n_heads):
            rows.append(
                {
                    "layer": l,
                    "head": h,
                    "previous_token": float(previous[h]),
                    "duplicate_token": float(duplicate[h]),
                    "induction": float(induction[h]),
                }
            )
    return pd.DataFrame(rows)


def distinct_tokens(tokens: list[int] | torch.Tensor) -> list[int]:
    """The distinct token ids of `tokens`, sorted: the order of both axes of `ov_answer_logits`."""
    return sorted({int(t) for t in torch.as_tensor(tokens).flatten().tolist()})


@torch.no_grad()
def ov_answer_logits(model, answer_tokens: list[int] | torch.Tensor, heads: list[Head] | None = None) -> torch.Tensor:
    """What each head's OV circuit writes about each answer token, read on the answer tokens' logits.

    Returns [heads, n, n] (heads in the order given, every head of the model by default; n the
    `distinct_tokens` of `answer_tokens`): entry [k, i, j] is the logit of answer j when answer i's
    representation after layer 0 (`blocks.0.hook_resid_post`, the token embedding after the first MLP, as
    Wang et al. use for GPT-2's copy scores: GPT-2's raw embeddings are read through its first MLP) goes
    through head k's norm, W_V (its key/value group's, with its bias) and W_O, then the final norm and the
    unembedding.
    A copying head has its row maxima on the diagonal, a negative-copying head its row minima.
    """
    answers = torch.as_tensor(distinct_tokens(answer_tokens), device=model_device(model))
    if len(answers) < 2:
        raise ValueError("copy scores need at least two distinct answer tokens")
    if heads is None:
        heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    weights = ModelWeights(model)
    _, cache = model.run_with_cache(answers[:, None], names_filter=lambda name: name == residual_post(0))
    embedded = cache[residual_post(0)][:, 0]  # each token's representation after layer 0
    normalised = {}
    for l in sorted({l for l, _ in heads}):
        layer = weights.layer(l)
        normalised[l] = weights.norm(embedded, layer.norm1_w, layer.norm1_b)
    unembed = weights.W_U[:, answers]
    out = []
    for l, h in heads:
        w_v, b_v, w_o = weights.head_ov(l, h)
        out.append(weights.final_norm((normalised[l] @ w_v + b_v) @ w_o) @ unembed)
    return torch.stack(out)


def copy_fractions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy and negative copy scores of [..., n, n] OV logits (`ov_answer_logits`): the fraction of rows
    whose largest, and whose smallest, entry is on the diagonal."""
    own = torch.arange(logits.shape[-1], device=logits.device)
    return (logits.argmax(dim=-1) == own).float().mean(-1), (logits.argmin(dim=-1) == own).float().mean(-1)


def copy_scores(model, answer_tokens: list[int] | torch.Tensor) -> pd.DataFrame:
    """Copy and negative copy scores of every head's OV circuit on a set of answer tokens, one row per head."""
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    copy, negative = copy_fractions(ov_answer_logits(model, answer_tokens, heads))
    return pd.DataFrame(
        {
            "layer": [l for l, _ in heads],
            "head": [h for _, h in heads],
            "copy_score": copy.cpu().numpy().astype(float),
            "negative_copy_score": negative.cpu().numpy().astype(float),
        }
    )


@torch.no_grad()
def attention_share(
    model, tokens: torch.Tensor, query_positions: torch.Tensor, key_mask: torch.Tensor, heads: list[Head]
) -> dict[Head, float]:
    """Mean share of each head's attention from `query_positions` that lands where `key_mask` is True.

    `tokens` [n, seq]; `query_positions` [n]; `key_mask` [n, seq] boolean.
    """
    if not heads:
        return {}
    layers = sorted({l for l, _ in heads})
    names = {attention_pattern(l) for l in layers}
    _, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda name: name in names)
    rows = torch.arange(tokens.shape[0])
    shares = {}
    for l, h in heads:
        pattern = cache[attention_pattern(l)][:, h].float().cpu()  # [n, query, key]
        from_query = pattern[rows, query_positions.cpu()]  # [n, key]
        shares[(l, h)] = float((from_query * key_mask.float()).sum(dim=-1).mean())
    return shares


def label_role(stage_kind: str, score: float, evidence: dict[str, float]) -> str:
    """The role of a selected head, by the stage that selected it and the evidence about it.

    - logits stage: "mover" when patching the head moves the logit difference towards the corrupted run
      (score > 0, the head writes the answer), "negative_mover" when it moves it away (score < 0).
    - query stage (receivers are movers' queries): "content_gatherer" when more of the head's attention
      from END goes to the question than to the answer candidates (evidence `question_share` and
      `candidates_share`, where the task has a question), otherwise "inhibition".
    - key/value stages: the detector with the largest score, if at least DETECTOR_MIN_SCORE, else "other".
    """
    if stage_kind == "logits":
        return "mover" if score > 0 else "negative_mover"
    if stage_kind == "query":
        question, candidates = evidence.get("question_share"), evidence.get("candidates_share")
        if question is not None and candidates is not None and question > candidates:
            return "content_gatherer"
        return "inhibition"
    if stage_kind == "key_value":
        best = max(DETECTORS, key=lambda d: evidence.get(d, float("-inf")))
        return best if evidence.get(best, float("-inf")) >= DETECTOR_MIN_SCORE else "other"
    raise ValueError(f"unknown stage kind {stage_kind!r}; expected logits, query or key_value")
