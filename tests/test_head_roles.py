import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from circuit_reuse.head_roles import attention_share, copy_scores, detector_scores, label_role


@pytest.fixture(scope="module")
def hf_model(cached_tiny_model):
    return GPT2LMHeadModel.from_pretrained(cached_tiny_model, attn_implementation="eager").eval()


def test_detector_scores_match_a_plain_loop_over_hugging_face_attentions(tiny_model, hf_model):
    table = detector_scores(tiny_model, seq_len=6, n_sequences=3, seed=5)
    generator = torch.Generator().manual_seed(5)
    half = torch.randint(1000, tiny_model.cfg.d_vocab - 1000, (3, 6), generator=generator)
    tokens = torch.cat([half, half], dim=1)
    with torch.no_grad():
        attentions = hf_model(tokens, output_attentions=True).attentions
    for row in table.itertuples():
        pattern = attentions[row.layer][:, row.head]
        previous = np.mean([pattern[b, i, i - 1].item() for b in range(3) for i in range(1, 12)])
        duplicate = np.mean([pattern[b, i, i - 6].item() for b in range(3) for i in range(6, 12)])
        induction = np.mean([pattern[b, i, i - 5].item() for b in range(3) for i in range(6, 11)])
        assert row.previous_token == pytest.approx(previous, abs=1e-5)
        assert row.duplicate_token == pytest.approx(duplicate, abs=1e-5)
        assert row.induction == pytest.approx(induction, abs=1e-5)
    assert len(table) == 2 * 4


def test_copy_scores_match_a_computation_from_the_raw_weights(tiny_model, hf_model):
    answers = [464, 1757, 3700, 5335, 7703]
    table = copy_scores(tiny_model, answers + [464])  # duplicates are ignored
    transformer = hf_model.transformer
    d_head = transformer.config.n_embd // transformer.config.n_head
    with torch.no_grad():
        after_layer0 = transformer(torch.tensor(answers)[:, None], output_hidden_states=True).hidden_states[1][:, 0]
        for row in table.itertuples():
            block = transformer.h[row.layer]
            _, _, value_weight = block.attn.c_attn.weight.split(transformer.config.n_embd, dim=1)
            _, _, value_bias = block.attn.c_attn.bias.split(transformer.config.n_embd, dim=0)
            cols = slice(row.head * d_head, (row.head + 1) * d_head)
            value = block.ln_1(after_layer0) @ value_weight[:, cols] + value_bias[cols]
            out = value @ block.attn.c_proj.weight[cols]
            logits = transformer.ln_f(out) @ hf_model.lm_head.weight[answers].T
            own = torch.arange(len(answers))
            assert row.copy_score == pytest.approx((logits.argmax(-1) == own).float().mean().item())
            assert row.negative_copy_score == pytest.approx((logits.argmin(-1) == own).float().mean().item())
    with pytest.raises(ValueError, match="two distinct"):
        copy_scores(tiny_model, [5, 5])


def test_attention_share_counts_the_masked_keys(tiny_model, hf_model):
    tokens = torch.randint(1000, 20000, (2, 7), generator=torch.Generator().manual_seed(0))
    query = torch.tensor([6, 4])
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, 1:3] = True
    shares = attention_share(tiny_model, tokens, query, mask, [(1, 2), (0, 0)])
    with torch.no_grad():
        attentions = hf_model(tokens, output_attentions=True).attentions
    for (l, h), share in shares.items():
        expected = np.mean([attentions[l][b, h, query[b], 1:3].sum().item() for b in range(2)])
        assert share == pytest.approx(expected, abs=1e-5)
    everything = attention_share(tiny_model, tokens, query, torch.ones(2, 7, dtype=torch.bool), [(1, 1)])
    assert everything[(1, 1)] == pytest.approx(1.0, abs=1e-5)


def test_role_rules():
    assert label_role("logits", 0.3, {}) == "mover"
    assert label_role("logits", -0.3, {}) == "negative_mover"
    assert label_role("query", 0.1, {"question_share": 0.6, "candidates_share": 0.2}) == "content_gatherer"
    assert label_role("query", 0.1, {"question_share": 0.1, "candidates_share": 0.5}) == "inhibition"
    assert label_role("query", 0.1, {}) == "inhibition"
    evidence = {"previous_token": 0.05, "duplicate_token": 0.3, "induction": 0.2}
    assert label_role("key_value", 0.1, evidence) == "duplicate_token"
    assert label_role("key_value", 0.1, {"previous_token": 0.05, "duplicate_token": 0.02, "induction": 0.0}) == "other"
    with pytest.raises(ValueError, match="unknown stage kind"):
        label_role("mlp", 0.0, {})
