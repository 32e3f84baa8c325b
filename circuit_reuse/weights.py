"""A model's forward pass computed from its weights, for the engines that recompute a few positions at a time.

`ModelWeights` reads a TransformerBridge's parameters, laid out for batched row-major matmuls, and computes
its blocks the way its family (`circuit_reuse.families`) declares: the norms, the projections of the heads'
queries, keys and values (with grouped-query attention, a key/value group serves several query heads), the
rotation of queries and keys by their positions, the MLP, and whether attention and MLP run in sequence or
side by side. The fast path patching and the END-only intervention engine share it, and
`forward_capturing`, its forward pass that keeps only what a caller asks for.

A head's q, k and v here are what the bridge's `hook_q`, `hook_k` and `hook_v` hold: the projections before
any rotation, so a value recorded at one position and written back at the same position is rotated the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from circuit_reuse.families import UnsupportedModelError, check_config
from circuit_reuse.hook_names import HEAD_INPUTS

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
}


@dataclass
class LayerWeights:
    """One block's parameters. Absent biases are zeros, so every family runs the same matmuls."""

    norm1_w: torch.Tensor
    norm1_b: torch.Tensor | None  # None: RMSNorm
    W_qkv: torch.Tensor  # [d_model, (n_heads + 2 n_kv_heads) d_head]: every head's q, then each group's k, then v
    b_qkv: torch.Tensor
    W_O: torch.Tensor  # [n_heads, d_head, d_model]
    b_O: torch.Tensor
    norm2_w: torch.Tensor
    norm2_b: torch.Tensor | None
    W_in: torch.Tensor  # [d_model, d_mlp]
    b_in: torch.Tensor
    W_gate: torch.Tensor | None  # [d_model, d_mlp] for a gated MLP
    W_out: torch.Tensor  # [d_mlp, d_model]
    b_out: torch.Tensor


class ModelWeights:
    """The weights the fast engines need, read from a TransformerBridge; blocks are read on first use, so a job
    touching a few layers copies only those. UnsupportedModelError for a family or config the engines lack."""

    def __init__(self, model):
        hf_config = getattr(getattr(model, "original_model", None), "config", None)
        if hf_config is None:
            raise UnsupportedModelError("the fast engines need a TransformerBridge over a Hugging Face model")
        self.family = check_config(hf_config)
        cfg = model.cfg
        self.model = model
        self.n_layers, self.n_heads, self.d_head, self.d_model = cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model
        self.n_kv_heads = getattr(cfg, "n_key_value_heads", None) or self.n_heads
        self.group = self.n_heads // self.n_kv_heads  # query heads per key/value group
        self.eps = cfg.eps
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        self.parallel = self.family.parallel(hf_config)
        self.final_w = model.ln_final.w
        self.final_b = model.ln_final.b if self.family.norm == "layer" else None
        self.W_E, self.W_U, self.b_U = model.W_E, model.W_U, model.b_U
        self.W_pos = model.W_pos if self.family.positions == "learned" else None
        self._rotary = model.rotary_emb if self.family.positions == "rotary" else None
        self._cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        self._layers: dict[int, LayerWeights] = {}

    # ---- parameters ----------------------------------------------------------------------------------------

    def layer(self, index: int) -> LayerWeights:
        if index not in self._layers:
            block = self.model.blocks[index]
            attn, mlp = block.attn, block.mlp
            d = self.d_model

            def heads_to_columns(w):  # [heads, d_model, d_head] -> [d_model, heads * d_head]
                return w.permute(1, 0, 2).reshape(d, -1)

            def bias(value, size):
                return value.reshape(size) if value is not None else self.W_E.new_zeros(size)

            projections = (attn.W_Q, attn.W_K, attn.W_V)
            biases = (attn.b_Q, attn.b_K, attn.b_V)
            widths = [w.shape[0] * self.d_head for w in projections]
            layer_norm = self.family.norm == "layer"
            self._layers[index] = LayerWeights(
                norm1_w=block.ln1.w,
                norm1_b=block.ln1.b if layer_norm else None,
                W_qkv=torch.cat([heads_to_columns(w) for w in projections], dim=1).contiguous(),
                b_qkv=torch.cat([bias(b, width) for b, width in zip(biases, widths, strict=True)]),
                W_O=attn.W_O.contiguous(),
                b_O=bias(attn.b_O, d),
                norm2_w=block.ln2.w,
                norm2_b=block.ln2.b if layer_norm else None,
                W_in=mlp.W_in.contiguous(),
                b_in=bias(getattr(mlp, "b_in", None), mlp.W_in.shape[1]),
                W_gate=mlp.W_gate.contiguous() if self.family.gated_mlp else None,
                W_out=mlp.W_out.contiguous(),
                b_out=bias(getattr(mlp, "b_out", None), d),
            )
        return self._layers[index]

    def qkv_index(self, head: int, component: str) -> int:
        """Where a head's q (its own), k or v (its group's) lies among the W_qkv blocks of d_head columns."""
        which = HEAD_INPUTS.index(component)
        if which == 0:
            return head
        return self.n_heads + (which - 1) * self.n_kv_heads + head // self.group

    def qkv_columns(self, layer: int, heads_components) -> tuple[torch.Tensor, torch.Tensor]:
        """W and b of the q/k/v projections of some (head, component), side by side: [d, n d_head], [n d_head]."""
        w = self.layer(layer)
        starts = [self.qkv_index(head, component) * self.d_head for head, component in heads_components]
        columns = [slice(start, start + self.d_head) for start in starts]
        return torch.cat([w.W_qkv[:, c] for c in columns], dim=1), torch.cat([w.b_qkv[c] for c in columns])

    def head_ov(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A head's OV circuit: its value projection (its group's, with grouped-query attention) W_V [d, d_head]
        and b_V [d_head], and its output projection W_O [d_head, d]."""
        w_v, b_v = self.qkv_columns(layer, [(head, "v")])
        return w_v, b_v, self.layer(layer).W_O[head]

    @property
    def centres(self) -> bool:
        """Whether the norms subtract the mean before scaling (LayerNorm) or only scale (RMSNorm)."""
        return self.family.norm == "layer"

    # ---- pieces of a block -----------------------------------------------------------------------------------

    def norm(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.centres:
            return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def norm_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm's divisor of residual rows [..., d] (the bridge's ln_final.hook_scale, squeezed)."""
        if self.centres:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1) + self.eps).sqrt()

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x, self.final_w, self.final_b)

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """The residual stream entering block 0 for tokens [B, W] at positions start.."""
        resid = self.W_E[tokens]
        if self.W_pos is not None:
            resid = resid + self.W_pos[start : start + tokens.shape[1]]
        return resid

    def project_qkv(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Normalised residual rows [..., d] -> q/k/v rows [..., n_heads + 2 n_kv_heads, d_head] (`qkv_index`)."""
        w = self.layer(layer)
        shape = x.shape[:-1]
        return torch.addmm(w.b_qkv, x.reshape(-1, self.d_model), w.W_qkv).reshape(*shape, -1, self.d_head)

    def split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [..., n_heads, d_head], k and v [..., n_kv_heads, d_head] from `project_qkv`'s rows."""
        H, G = self.n_heads, self.n_kv_heads
        return qkv[..., :H, :], qkv[..., H : H + G, :], qkv[..., H + G :, :]

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Queries or keys [..., heads, d_head] rotated by their positions (broadcast against x.shape[:-2]);
        unchanged for learned positions."""
        if self._rotary is None:
            return x
        cos, sin = self._cos_sin_table(int(positions.max()) + 1)
        cos, sin = cos[positions][..., None, :], sin[positions][..., None, :]
        width = cos.shape[-1]  # GPT-NeoX rotates the first rotary_pct of each head's dimensions only
        turned, kept = x[..., :width], x[..., width:]
        half = width // 2
        swapped = torch.cat([-turned[..., half:], turned[..., :half]], dim=-1)
        return torch.cat([turned * cos + swapped * sin, kept], dim=-1)

    def _cos_sin_table(self, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos_sin is None or self._cos_sin[0].shape[0] < n_positions:
            # The model's own rotary embedding gives cos and sin, so its rope type and scaling are followed.
            positions = torch.arange(max(n_positions, 64), device=self.W_E.device)[None]
            probe = self.W_E.new_zeros(1, positions.shape[1], self.d_head)
            rotary = getattr(self._rotary, "original_component", self._rotary)
            cos, sin = rotary(probe, positions)
            self._cos_sin = (cos[0], sin[0])
        return self._cos_sin

    def expand_groups(self, kv: torch.Tensor, dim: int) -> torch.Tensor:
        """Keys or values per group -> per query head, along `dim`."""
        return kv if self.group == 1 else kv.repeat_interleave(self.group, dim=dim)

    def attention_output(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z [..., n_heads, d_head] -> the attention output [..., d_model]."""
        w = self.layer(layer)
        shape = z.shape[:-2]
        flat = z.reshape(-1, self.n_heads * self.d_head)
        return torch.addmm(w.b_O, flat, w.W_O.reshape(-1, self.d_model)).reshape(*shape, self.d_model)

    def mlp_out(self, layer: int, stream: torch.Tensor) -> torch.Tensor:
        """A block's MLP output for the residual-stream rows [..., d_model] that its norm reads."""
        w = self.layer(layer)
        x = self.norm(stream, w.norm2_w, w.norm2_b)
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        hidden = torch.addmm(w.b_in, rows, w.W_in)
        activation = ACTIVATIONS[self.family.activation]
        hidden = activation(rows @ w.W_gate) * hidden if w.W_gate is not None else activation(hidden)
        return torch.addmm(w.b_out, hidden, w.W_out).reshape(shape)

    def mlp_stream(self, resid_pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The residual stream the MLP reads: after attention, or (parallel blocks) the block's input."""
        return resid_pre if self.parallel else resid_pre + attn_out

    def block_output(self, layer: int, resid_pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and its attention output."""
        resid_mid = resid_pre + attn_out
        return resid_mid + self.mlp_out(layer, self.mlp_stream(resid_pre, attn_out))


def fast_path_problem(model) -> str | None:
    """Why the fast engines cannot compute this model (`ModelWeights` refuses it), or None when they can."""
    try:
        ModelWeights(model)
    except UnsupportedModelError as error:
        return str(error)
    return None


def forward_capturing(
    weights: ModelWeights,
    tokens: torch.Tensor,
    take: Callable[[str, int, torch.Tensor], None],
    start: int = 0,
    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
):
    """A forward pass from the weights over positions start..T-1; return the final residual stream there.

    `take(what, layer, activation)` sees "z" [B, W, H, d_head], "resid_pre" and "resid_mid" (the stream the
    MLP reads) [B, W, d] and "k", "v" [B, W, n_kv_heads, d_head] (keys rotated) of every layer for the
    W = T - start computed positions and keeps what it needs. With start > 0, `prefix_kv[layer]` holds the
    keys and values [B, start, n_kv_heads, d_head] of the positions before: a run whose tokens agree with
    another's up to `start` reuses that run's (causal attention makes them equal). Unlike the bridge this
    computes no logits (the engines read their metrics from the final residual stream at one position) and
    keeps no activations it is not asked for.
    """
    B, T = tokens.shape
    W = T - start
    resid = weights.embed(tokens[:, start:], start)
    positions = torch.arange(start, T, device=tokens.device)
    # Query i (position start + i) may read keys 0..start + i. Right padding only: causal attention keeps every
    # real token from reading the padding after it.
    mask = torch.ones(W, T, dtype=torch.bool, device=tokens.device).tril(diagonal=start) if start else None
    for layer in range(weights.n_layers):
        w = weights.layer(layer)
        take("resid_pre", layer, resid)
        q, k, v = weights.split_qkv(weights.project_qkv(layer, weights.norm(resid, w.norm1_w, w.norm1_b)))
        q, k = weights.rotate(q, positions), weights.rotate(k, positions)
        take("k", layer, k)
        take("v", layer, v)
        if start:
            k = torch.cat([prefix_kv[layer][0], k], dim=1)
            v = torch.cat([prefix_kv[layer][1], v], dim=1)
        z = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            weights.expand_groups(k, 2).transpose(1, 2),
            weights.expand_groups(v, 2).transpose(1, 2),
            attn_mask=mask,
            is_causal=not start,
            scale=weights.scale,
        ).transpose(1, 2)  # [B, W, H, dh]
        take("z", layer, z)
        attn_out = weights.attention_output(layer, z)
        take("resid_mid", layer, weights.mlp_stream(resid, attn_out))
        resid = weights.block_output(layer, resid, attn_out)
    return resid
