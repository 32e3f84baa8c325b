"""The names of the model's hook points, in one place: every module that hooks the model spells them here.

They are TransformerLens's names, which `TransformerBridge` exposes for GPT-2. Shapes are those of a
forward pass on [batch, pos] tokens.
"""

from __future__ import annotations


def attention_pattern(layer: int) -> str:
    """Attention probabilities: [batch, head, query_pos, key_pos]."""
    return f"blocks.{layer}.attn.hook_pattern"


def head_output(layer: int) -> str:
    """Each head's attention-weighted values before W_O (`z`): [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


# A head's inputs by the letter path patching names them with: [batch, pos, head, d_head] each.
HEAD_INPUTS = ("q", "k", "v")


def head_input(layer: int, component: str) -> str:
    """A head's query, key or value vectors (`component` "q", "k" or "v"): [batch, pos, head, d_head]."""
    if component not in HEAD_INPUTS:
        raise ValueError(f"a head's input is one of {', '.join(HEAD_INPUTS)}, not {component!r}")
    return f"blocks.{layer}.attn.hook_{component}"


def mlp_output(layer: int) -> str:
    """The MLP's output, added to the residual stream: [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_mlp_out"


def residual_pre(layer: int) -> str:
    """The residual stream entering the block (for block 0, the embedded tokens): [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_pre"


def residual_post(layer: int) -> str:
    """The residual stream leaving the block: [batch, pos, d_model]."""
    return f"blocks.{layer}.hook_resid_post"


# The final residual stream, entering the final LayerNorm: [batch, pos, d_model].
FINAL_RESIDUAL = "ln_final.hook_in"
# The final LayerNorm's scale (the root-mean-square of the centred residual): [batch, pos, 1].
FINAL_LN_SCALE = "ln_final.hook_scale"
