"""Every model family through the fast engines: random stand-ins of Llama (SmolLM2: RMSNorm, rotary, grouped-query
attention, a gated MLP), GPT-NeoX (Pythia: parallel attention and MLP, rotary on a quarter of each head) and Qwen2
(as Llama, with q/k/v biases), each checked against the hooked bridge, the reference, as the GPT-2 tests do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_end_edits import edit_sets, hooked, random_prompts
from test_patching import (
    AVERAGING_BATCH,
    LENGTHS,
    assert_same_scores,
    both,
    corrupt_early,
    earlier_positions,
    expected_senders,
    make_prompts,
    scored_heads,
)

from circuit_reuse.attribution import score_heads
from circuit_reuse.config import ConfigError, validate_config
from circuit_reuse.config_checks import model_shape
from circuit_reuse.end_edits import final_logits, final_scale, run_end_edits, supports
from circuit_reuse.families import FAMILIES, UnsupportedModelError, architectures
from circuit_reuse.head_roles import copy_scores
from circuit_reuse.models import ModelCacheError, ModelSpec, cache_model
from circuit_reuse.patching import path_patch_reference
from circuit_reuse.readouts import head_logit_attribution, readout_weights
from circuit_reuse.weights import ModelWeights, forward_capturing

TOLERANCE = 1e-5
# Weights ten times GPT-2's initialisation give sharp attention, so paths score well above float32 rounding.
SHARP = 0.2
# Small stand-ins of each family in its own config fields: 3 layers of 4 query heads, in 2 key/value groups
# where the family groups them.
STAND_INS = {
    "smollm2-135m": dict(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=SHARP,
    ),
    "pythia-160m": dict(
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_size=64,
        intermediate_size=256,
        max_position_embeddings=64,
        initializer_range=SHARP,
    ),
    "qwen2.5-0.5b": dict(
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=SHARP,
    ),
}


@pytest.fixture(scope="module", params=sorted(STAND_INS))
def stand_in(request, family_model):
    model = family_model(request.param, seed=3, **STAND_INS[request.param])
    if request.param == "qwen2.5-0.5b":
        # Qwen2 initialises its q/k/v biases to zero; random ones make the stand-in exercise them.
        generator = torch.Generator().manual_seed(0)
        for block in model.original_model.model.layers:
            for projection in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
                projection.bias.copy_(torch.randn(projection.bias.shape, generator=generator) * SHARP)
    return model


def test_each_family_is_its_own_adapter(stand_in):
    weights = ModelWeights(stand_in)
    expected = {"llama": (2, False), "gpt_neox": (1, True), "qwen2": (4, False)}
    assert (weights.group, weights.parallel) == expected[weights.family.name]
    assert weights.family is FAMILIES[stand_in.original_model.config.model_type]


def test_the_forward_pass_from_the_weights_is_the_bridges(stand_in):
    tokens, end, _ = random_prompts(1)
    with torch.no_grad():
        final = forward_capturing(ModelWeights(stand_in), tokens, lambda *args: None)
        logits = final_logits(ModelWeights(stand_in), final)
        expected = stand_in(tokens)
    assert (expected - expected.mean()).abs().max() > 100 * TOLERANCE
    # float32 rounding grows with the logits, which sharp weights make large.
    torch.testing.assert_close(logits, expected, rtol=0, atol=TOLERANCE * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("freeze_mlps", [False, True])
def test_logits_stage_matches_reference(stand_in, freeze_mlps):
    clean, corrupted, answers, _ = make_prompts(stand_in, LENGTHS, seed=1)
    options = dict(averaging="batch_mean", averaging_batch_size=AVERAGING_BATCH)
    fast, reference = both(stand_in, clean, corrupted, answers, "logits", None, freeze_mlps, **options)
    assert_same_scores(fast, reference)


# Receivers in one to three layers, k and v among them; with grouped-query attention (1, 0, "k") and (1, 1, "k")
# are one group's key.
QKV_CASES = [
    ([(1, 2, "q")], False, "END", "authors"),
    ([(1, 0, "k"), (1, 1, "k"), (1, 3, "v")], True, "earlier", "below_lowest"),
    ([(1, 2, "v"), (2, 0, "k")], False, "earlier", "any_path"),
    ([(1, 1, "q"), (2, 3, "k"), (2, 2, "v")], True, "END", "authors"),
]


@pytest.mark.parametrize(("receivers", "freeze_mlps", "where", "sender_set"), QKV_CASES)
def test_qkv_stage_matches_reference(stand_in, receivers, freeze_mlps, where, sender_set):
    clean, corrupted, answers, end = make_prompts(stand_in, LENGTHS, seed=2, corrupt_at=corrupt_early)
    position = None if where == "END" else earlier_positions(end)
    options = dict(sender_set=sender_set, averaging="pooled")
    fast, reference = both(stand_in, clean, corrupted, answers, receivers, position, freeze_mlps, **options)
    assert_same_scores(fast, reference)
    cfg = stand_in.cfg
    assert scored_heads(fast) == expected_senders(receivers, cfg.n_layers, cfg.n_heads, sender_set)


def test_a_key_receiver_is_its_heads_key_value_group(family_model):
    """Heads 0 and 1 share a key: patching that key for either is one receiver, so every sender scores the same."""
    model = family_model("smollm2-135m", seed=3, **STAND_INS["smollm2-135m"])
    clean, corrupted, answers, end = make_prompts(model, LENGTHS, seed=2, corrupt_at=corrupt_early)
    options = dict(sender_set="below_lowest", averaging="pooled", progress=False)
    by_head = [
        path_patch_reference(model, clean, corrupted, answers, [(2, h, "k")], None, **options) for h in (0, 1, 2)
    ]
    torch.testing.assert_close(by_head[0], by_head[1], rtol=0, atol=0, equal_nan=True)
    defined = ~by_head[0].isnan()
    assert (by_head[0][defined] - by_head[2][defined]).abs().max() > 1e-3, "heads 0 and 2 lie in different groups"


def test_end_engine_matches_the_hooked_forward_pass(stand_in):
    n_layers, n_heads = stand_in.cfg.n_layers, stand_in.cfg.n_heads
    tokens, end, generator = random_prompts(4)
    sets = edit_sets(n_layers, n_heads, end, generator)
    readout = {n_layers - 1: (0, n_heads - 1), 1: (0, 1)}
    weights = ModelWeights(stand_in)
    assert supports(stand_in)
    with torch.no_grad():
        fast = run_end_edits(weights, tokens, end, sets, readout)
        for row, edits in enumerate(sets):
            logits, seen = hooked(stand_in, tokens, end, edits, readout)
            bound = TOLERANCE * max(1.0, logits.abs().max().item())
            torch.testing.assert_close(final_logits(weights, fast.final[row]), logits, rtol=0, atol=bound)
            torch.testing.assert_close(final_scale(weights, fast.final[row]), seen["scale"], rtol=1e-4, atol=0)
            for layer in readout:
                torch.testing.assert_close(fast.patterns[layer][row], seen["pattern", layer], rtol=0, atol=TOLERANCE)
                torch.testing.assert_close(fast.z[layer][row], seen["z", layer], rtol=0, atol=TOLERANCE)


def test_a_setting_the_engines_lack_runs_the_reference_and_says_so(family_model):
    model = family_model("smollm2-135m", seed=1, **{**STAND_INS["smollm2-135m"], "hidden_act": "gelu"})
    with pytest.raises(UnsupportedModelError, match="this llama model has activation gelu"):
        ModelWeights(model)
    assert not supports(model)
    clean, corrupted, answers, _ = make_prompts(model, LENGTHS, seed=1)
    with pytest.warns(UserWarning, match="runs path_patch_reference"):
        scores = score_heads(model, clean, corrupted, answers, "logits", None, progress=False)
    reference = path_patch_reference(model, clean, corrupted, answers, "logits", None, progress=False)
    assert torch.equal(scores, reference)


def test_stand_ins_take_their_tokenizers_vocabulary_and_a_released_shape(family_model, tokenizer_dir):
    model = family_model("pythia-160m", seed=0, **STAND_INS["pythia-160m"])
    config = model.original_model.config
    assert config.vocab_size == 50257 and config.eos_token_id == 50256
    # transformers reads the released rotary_pct and rotary_emb_base into its rope parameters.
    assert config.rope_parameters["partial_rotary_factor"] == architectures()["pythia-160m"]["config"]["rotary_pct"]
    assert config.use_parallel_residual and not config.tie_word_embeddings


def test_an_unknown_architecture_or_field_is_named(tmp_path, tokenizer_dir):
    with pytest.raises(ModelCacheError, match="unknown architecture 'llama-7b'; allowed: gpt2,"):
        cache_model(ModelSpec(name="m", source="random", architecture="llama-7b"), tmp_path / "a", tokenizer_dir)
    spec = ModelSpec(name="m", source="random", architecture="smollm2-135m", overrides={"n_layer": 2})
    with pytest.raises(ModelCacheError, match="override 'n_layer' is not a field of LlamaConfig"):
        cache_model(spec, tmp_path / "b", tokenizer_dir)


# --------------------------------------------------------------------------------------------------------------
# The config: every architecture and every family's override fields, checked before any job


def test_the_schema_lists_every_architecture_and_override_field():
    schema = yaml.safe_load(Path("workflow/schemas/config.schema.yaml").read_text())
    model = schema["$defs"]["model"]["properties"]
    assert model["architecture"]["enum"] == list(architectures())
    fields = [field for family in FAMILIES.values() for field in family.override_fields]
    assert model["overrides"]["propertyNames"]["enum"] == list(dict.fromkeys(fields))


def _problems(config) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    return str(raised.value)


def _config(name: str) -> dict:
    return yaml.safe_load(Path(name).read_text())


def test_a_stand_in_of_another_family_is_checked_in_its_own_fields():
    smoke_config = _config("workflow/configs/smoke.yaml")
    smoke_config["models"]["tiny-a"] = {
        "source": "random",
        "architecture": "smollm2-135m",
        "overrides": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3, "n_embd": 64},
    }
    message = _problems(smoke_config)
    assert "models.tiny-a.overrides.n_embd: not a field a smollm2-135m stand-in may change" in message
    assert (
        "models.tiny-a.overrides.num_key_value_heads: 3 key/value groups do not divide num_attention_heads" in message
    )
    assert model_shape(smoke_config["models"]["tiny-a"]) == {"n_layer": 2, "n_head": 4, "n_embd": 576}


def test_an_organism_of_another_family_is_refused_before_any_job():
    organisms = _config("workflow/configs/organisms.yaml")
    name = next(name for name, entry in organisms["models"].items() if entry["source"] == "trained")
    organisms["models"][name]["architecture"] = "pythia-160m"
    organisms["models"][name]["overrides"] = {"num_hidden_layers": 2}
    assert f"models.{name}.architecture: 'pythia-160m' is a gpt_neox model; organisms" in _problems(organisms)


def _hugging_face_modules(model):
    """A stand-in's raw Hugging Face modules, an independent route to its weights: the blocks, the final norm, the
    unembedding, and per layer and head the value projection (W [d_head, d], b) and output columns [d, d_head]."""
    hf = model.original_model
    H, d_head = model.cfg.n_heads, model.cfg.d_head
    if hf.config.model_type == "gpt_neox":
        blocks, final_norm, unembed = hf.gpt_neox.layers, hf.gpt_neox.final_layer_norm, hf.lm_head.weight

        def value(layer, head):  # one fused projection, laid out [head, (q, k, v), d_head]
            projection = blocks[layer].attention.query_key_value
            weight = projection.weight.view(H, 3, d_head, -1)[head, 2]
            return weight, projection.bias.view(H, 3, d_head)[head, 2]

        def output(layer, head):
            return blocks[layer].attention.dense.weight[:, head * d_head : (head + 1) * d_head]

    else:
        blocks, final_norm, unembed = hf.model.layers, hf.model.norm, hf.lm_head.weight
        group = H // hf.config.num_key_value_heads

        def value(layer, head):  # a query head reads its key/value group's value
            projection = blocks[layer].self_attn.v_proj
            rows = slice(head // group * d_head, (head // group + 1) * d_head)
            bias = projection.bias[rows] if projection.bias is not None else torch.zeros(d_head)
            return projection.weight[rows], bias

        def output(layer, head):
            return blocks[layer].self_attn.o_proj.weight[:, head * d_head : (head + 1) * d_head]

    return blocks, final_norm, unembed, value, output


def test_copy_scores_match_the_raw_hugging_face_modules(stand_in):
    answers = [464, 1757, 3700, 5335, 7703]
    table = copy_scores(stand_in, answers)
    blocks, final_norm, unembed, value, output = _hugging_face_modules(stand_in)
    own = torch.arange(len(answers))
    with torch.no_grad():
        hidden = stand_in.original_model(torch.tensor(answers)[:, None], output_hidden_states=True).hidden_states
        after_layer0 = hidden[1][:, 0]
        for row in table.itertuples():
            w_v, b_v = value(row.layer, row.head)
            values = blocks[row.layer].input_layernorm(after_layer0) @ w_v.T + b_v
            logits = final_norm(values @ output(row.layer, row.head).T) @ unembed[answers].T
            assert row.copy_score == pytest.approx((logits.argmax(-1) == own).float().mean().item())
            assert row.negative_copy_score == pytest.approx((logits.argmin(-1) == own).float().mean().item())
    assert len(table) == stand_in.cfg.n_layers * stand_in.cfg.n_heads


def test_dla_is_the_change_from_removing_a_head_from_the_final_residual(stand_in):
    """An RMSNorm subtracts no mean, so a head's direct logit attribution is its output itself through the
    held scale; a LayerNorm's is the centred output. Either way it is what removing the output changes."""
    tokens, end, _ = random_prompts(5)
    rows = torch.arange(len(end))
    answer, wrong = torch.tensor(464), torch.tensor(1757)
    weights = readout_weights(stand_in)
    _, _, _, _, output = _hugging_face_modules(stand_in)
    with torch.no_grad():
        logits, cache = stand_in.run_with_cache(tokens)
        scale = cache["ln_final.hook_scale"]
        direction = (weights.gamma * (weights.W_U[:, answer] - weights.W_U[:, wrong])).expand(len(end), -1)
        for layer, head in [(0, 1), (stand_in.cfg.n_layers - 1, stand_in.cfg.n_heads - 1)]:
            out = cache[f"blocks.{layer}.attn.hook_z"][rows, end, head] @ output(layer, head).T

            def remove(resid, hook=None, out=out):
                resid = resid.clone()
                resid[rows, end] -= out
                return resid

            ablated = stand_in.run_with_hooks(
                tokens, fwd_hooks=[("ln_final.hook_in", remove), ("ln_final.hook_scale", lambda s, hook=None: scale)]
            )
            change = (logits - ablated)[rows, end]
            expected = change[:, answer] - change[:, wrong]
            got = head_logit_attribution(out[:, None], scale[rows, end, 0], direction, weights.centred)[:, 0]
            torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-4)
    assert weights.centred == (stand_in.original_model.config.model_type == "gpt_neox")
