"""The names of the model's hook points, in one place: every module that hooks the model spells them here.

They are TransformerLens's names, which `TransformerBridge` exposes for GPT-2.
"""

from __future__ import annotations


def head_output(layer: int) -> str:
    """Each head's attention-weighted values before W_O: [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def attention_pattern(layer: int) -> str:
    """Attention probabilities: [batch, head, query_pos, key_pos]."""
    return f"blocks.{layer}.attn.hook_pattern"


# The final LayerNorm's scale (the root-mean-square of the centred residual): [batch, pos, 1].
FINAL_LN_SCALE = "ln_final.hook_scale"
