"""Model families: one adapter per architecture family, declaring what the engines and the model cache need.

A family is what Hugging Face calls a model type (GPT-2, GPT-NeoX for Pythia, Llama for SmolLM2, Qwen2 for
Qwen2.5). Its adapter says how a block computes (LayerNorm or RMSNorm, the MLP's activation and whether it is
gated, attention and MLP in sequence or in parallel, learned or rotary positions), which Hugging Face class
builds a random stand-in, and which configs of that type the engines do not implement. The engines
(`circuit_reuse.engine_weights` and the fast path patching and END-only intervention over it) read these
declarations and nothing else about a family.

The released models' configs ("architectures", e.g. `pythia-160m`) are data, one JSON file each under
`circuit_reuse/data/architectures/`, naming the Hub config they were taken from. A random stand-in copies
one of them, with `overrides` in that family's own config fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any, Literal


class UnsupportedModelError(ValueError):
    """A model of a family, or a config of a family, that the engines do not implement."""


@dataclass(frozen=True)
class Family:
    """How one family's models compute, as the engines implement it."""

    name: str
    model_class: str  # the transformers class that builds a random stand-in
    config_class: str
    norm: Literal["layer", "rms"]
    activation: Literal["gelu_tanh", "gelu", "silu"]
    gated_mlp: bool  # MLP(x) = W_out (act(x W_gate) * (x W_in)), as in Llama
    positions: Literal["learned", "rotary"]
    # The config fields that give the number of layers, heads and the residual width.
    shape_fields: tuple[str, str, str]
    # Whether attention and MLP both read the block's input (GPT-NeoX's use_parallel_residual), per config.
    parallel: Callable[[Any], bool]
    # Settings of a config that the engines do not implement, as phrases ("activation relu").
    unsupported: Callable[[Any], list[str]]
    # The config fields a random stand-in or an organism may change (`overrides`).
    override_fields: tuple[str, ...]

    def shape(self, config: Mapping[str, Any]) -> tuple[int, int, int]:
        """(layers, heads, d_model) of a config given as a dict of its fields."""
        return tuple(int(config[field]) for field in self.shape_fields)


def _gpt2_unsupported(config) -> list[str]:
    problems = []
    if config.activation_function != "gelu_new":
        problems.append(f"activation {config.activation_function}")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx")
    if not getattr(config, "scale_attn_weights", True):
        problems.append("unscaled attention")
    if getattr(config, "reorder_and_upcast_attn", False):
        problems.append("reorder_and_upcast_attn")
    return problems


def _neox_unsupported(config) -> list[str]:
    problems = [] if config.hidden_act == "gelu" else [f"activation {config.hidden_act}"]
    if not getattr(config, "attention_bias", True):
        problems.append("attention without biases")
    return problems + _rope_problems(config)


def _llama_unsupported(config) -> list[str]:
    problems = [] if config.hidden_act == "silu" else [f"activation {config.hidden_act}"]
    if getattr(config, "mlp_bias", False):
        problems.append("MLP biases")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        problems.append(f"head_dim {head_dim} x {config.num_attention_heads} heads != hidden_size")
    return problems + _rope_problems(config)


def _qwen2_unsupported(config) -> list[str]:
    problems = _llama_unsupported(config)
    if getattr(config, "use_sliding_window", False):
        problems.append("sliding-window attention")
    return problems


def _rope_problems(config) -> list[str]:
    # The engines take cos and sin from the model's own rotary embedding, so any rope type it computes is
    # exact; what they cannot follow is a rotation that depends on the sequence's length (dynamic scaling).
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    return [f"rope type {rope_type}"] if rope_type in ("dynamic", "longrope") else []


_LLAMA = Family(
    name="llama",
    model_class="LlamaForCausalLM",
    config_class="LlamaConfig",
    norm="rms",
    activation="silu",
    gated_mlp=True,
    positions="rotary",
    shape_fields=("num_hidden_layers", "num_attention_heads", "hidden_size"),
    parallel=lambda config: False,
    unsupported=_llama_unsupported,
    override_fields=(
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "vocab_size",
    ),
)
# Qwen2 is Llama's block with q/k/v biases (read like any bias) and an optional sliding window (refused).
_QWEN2 = replace(
    _LLAMA, name="qwen2", model_class="Qwen2ForCausalLM", config_class="Qwen2Config", unsupported=_qwen2_unsupported
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="gpt2",
            model_class="GPT2LMHeadModel",
            config_class="GPT2Config",
            norm="layer",
            activation="gelu_tanh",
            gated_mlp=False,
            positions="learned",
            shape_fields=("n_layer", "n_head", "n_embd"),
            parallel=lambda config: False,
            unsupported=_gpt2_unsupported,
            override_fields=(
                "n_layer",
                "n_head",
                "n_embd",
                "n_positions",
                "n_inner",
                "vocab_size",
                "layer_norm_epsilon",
                "activation_function",
            ),
        ),
        Family(
            name="gpt_neox",
            model_class="GPTNeoXForCausalLM",
            config_class="GPTNeoXConfig",
            norm="layer",
            activation="gelu",
            gated_mlp=False,
            positions="rotary",
            shape_fields=("num_hidden_layers", "num_attention_heads", "hidden_size"),
            parallel=lambda config: bool(config.use_parallel_residual),
            unsupported=_neox_unsupported,
            override_fields=(
                "num_hidden_layers",
                "num_attention_heads",
                "hidden_size",
                "intermediate_size",
                "rotary_pct",
                "max_position_embeddings",
                "layer_norm_eps",
                "use_parallel_residual",
                "tie_word_embeddings",
                "vocab_size",
            ),
        ),
        _LLAMA,
        _QWEN2,
    )
}


def family_named(model_type: str) -> Family:
    """The adapter of a Hugging Face model type; UnsupportedModelError listing the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not a supported family; supported: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


@cache
def architectures() -> dict[str, dict[str, Any]]:
    """Every released model a stand-in can copy: name -> {family, hub_id, source, fields, config}."""
    folder = resources.files("circuit_reuse.data") / "architectures"
    found = {
        entry.name.removesuffix(".json"): json.loads(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }
    return dict(sorted(found.items()))


def architecture(name: str) -> dict[str, Any]:
    """One released model's record; UnsupportedModelError listing the known ones for an unknown name."""
    known = architectures()
    if name not in known:
        raise UnsupportedModelError(f"unknown architecture {name!r}; allowed: {', '.join(known)}")
    return known[name]


def hub_architecture(hub_id: str) -> str | None:
    """The architecture whose released model is this Hub repository (with or without its organisation)."""
    for name, record in architectures().items():
        if hub_id in (record["hub_id"], record["hub_id"].split("/")[-1]):
            return name
    return None


def stand_in_config(name: str, **overrides: Any):
    """A transformers config with a released model's fields, `overrides` (that family's field names) on top."""
    import transformers

    record = architecture(name)
    family = FAMILIES[record["family"]]
    config_class = getattr(transformers, family.config_class)
    unknown = sorted(set(overrides) - set(config_class().to_dict()))
    if unknown:
        raise UnsupportedModelError(
            f"override {unknown[0]!r} is not a field of {family.config_class} (architecture {name!r})"
        )
    return config_class(**{**record["config"], **overrides})


def check_config(config) -> Family:
    """The family of a transformers config, or UnsupportedModelError naming what the engines do not implement."""
    family = family_named(config.model_type)
    problems = family.unsupported(config)
    if problems:
        raise UnsupportedModelError(
            f"this {family.name} model has {', '.join(problems)}, which circuit-reuse's engines do not implement"
        )
    return family
