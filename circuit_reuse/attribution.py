"""Attribution patching: gradient estimates of the path-patching scores, in a few passes whatever the senders.

For a sender s, receivers R and a patch position p, exact path patching (`circuit_reuse.patching`) measures
m(x + D_s) - m(x): x are the receivers' clean inputs at p (their q, k or v vectors, or the final residual
stream), D_s what s's corrupted output changes in them through the residual stream at p with every other head
there frozen (and every MLP output there too with `freeze_mlps`), m the task's metric at END. It costs passes
per sender.

- `eap` replaces that effect by its first-order term, for every sender at once:

      (dm/dx) . (dx/dz_s through the frozen path) . (z_s^corrupted - z_s^clean)   at p, per prompt.

  Two backward passes per batch give it: (1) dm/dx, from a clean run with a zero probe added to each
  receiver's input at p; (2) the frozen path's vector-Jacobian product of that gradient, from a clean run in
  which every head's output at p is cut from what computed it and a zero probe added in its place (every MLP
  output at p cut too with `freeze_mlps`), so the gradient of sum(dm/dx . x) reaches each probe through the
  residual stream at p alone, as the freezing allows. A sender in a receiver layer reaches only the receivers
  above it, and one whose receivers all lie in its own layer scores exactly 0, as in the exact scores.
- `eap_ig` forms both gradients at `ig_steps` points of the straight line from the clean to the corrupted
  input (the residual stream entering block 0, at alpha = (k - 1/2) / ig_steps, the midpoint rule) and
  averages their product before the dot product with the sender's clean-to-corrupted difference, as
  integrated-gradients edge attribution does (Hanna et al., 2024). Where the effect is linear in the sender's
  output both equal the exact score; otherwise the line integral weighs every point between the two inputs,
  all senders moving together, which the exact score, one sender at a time, does not.

The per-prompt estimates of LD_patched - LD_clean become scores by the exact scores' own formula and averaging
(`patching.PromptEffects`) with the exact LD_clean and LD_corrupt, over the same sender set, so every
downstream step reads either kind of grid alike. Everything runs on the model's hooks (`hook_names`), nothing
on its weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from circuit_reuse.hook_names import FINAL_RESIDUAL, head_input, head_output, mlp_output, residual_pre
from circuit_reuse.metrics import Metric
from circuit_reuse.patching import (
    AUTHORS_AVERAGING_BATCH_SIZE,
    DEFAULT_AVERAGING,
    DEFAULT_BATCH_SIZE,
    DEFAULT_SENDER_SET,
    PatchJob,
    PromptEffects,
    Sender,
    _check_scoring,
    _progress,
    job_metric,
    path_patch,
    path_patch_reference,
    prepare_job,
)
from circuit_reuse.weights import fast_path_problem

# How a stage's scores are computed: exact path patching (the paper's) or one of its gradient estimates.
METHODS = {
    "exact": "path patching, one patched path per sender (the paper's)",
    "eap": "attribution patching: the first-order estimate of each sender's path-patching effect",
    "eap_ig": "attribution patching with integrated gradients along the clean-to-corrupted input line",
}
DEFAULT_METHOD = "exact"
DEFAULT_IG_STEPS = 5


def attribution_patch(
    model,
    clean_tokens,
    corrupted_tokens,
    answer_tokens,
    receivers,
    position,
    freeze_mlps: bool = False,
    *,
    method: str = "eap",
    ig_steps: int = DEFAULT_IG_STEPS,
    senders: Sequence[Sender] | None = None,
    sender_set: str = DEFAULT_SENDER_SET,
    averaging: str = DEFAULT_AVERAGING,
    averaging_batch_size: int = AUTHORS_AVERAGING_BATCH_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    end_positions=None,
    metric: Metric | None = None,
    metric_weights=None,
    progress: bool = True,
) -> torch.Tensor:
    """EAP or EAP-IG estimates of the path-patching scores: float64 [n_layers, n_heads], NaN for non-senders.

    The arguments are `patching.path_patch`'s, plus `method` ("eap" or "eap_ig") and `ig_steps` (points on
    the clean-to-corrupted line, eap_ig only). `batch_size` bounds memory: each batch keeps one forward pass's
    activations for its backward pass.
    """
    if method not in ("eap", "eap_ig"):
        raise ValueError(f"method must be 'eap' or 'eap_ig' (attribution patching); got {method!r}")
    if method == "eap_ig" and (not isinstance(ig_steps, int) or isinstance(ig_steps, bool) or ig_steps < 1):
        raise ValueError(f"ig_steps must be a positive int; got {ig_steps!r}")
    _check_scoring(batch_size, averaging, averaging_batch_size)
    job = prepare_job(
        model,
        clean_tokens,
        corrupted_tokens,
        answer_tokens,
        receivers,
        position,
        freeze_mlps,
        senders,
        end_positions,
        sender_set,
        metric,
        metric_weights,
    )
    alphas = [0.0] if method == "eap" else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    effects = PromptEffects(job.n_prompts, job.senders)
    with _progress(job, batch_size, progress, f"attribution patching ({method})") as bar:
        for prompts, batch in job.batches(batch_size):
            ld_clean, ld_corrupt, estimate = _batch_estimates(model, batch, alphas)
            effects.add_baselines(prompts, ld_clean, ld_corrupt)
            effects.add_senders(prompts, batch.senders, estimate)
            bar.update(len(batch.senders))
    return effects.scores(job.n_layers, job.n_heads, averaging, averaging_batch_size)


def score_heads(
    model,
    clean_tokens,
    corrupted_tokens,
    answer_tokens,
    receivers,
    position,
    freeze_mlps: bool = False,
    *,
    method: str = DEFAULT_METHOD,
    ig_steps: int | None = None,
    **options,
) -> torch.Tensor:
    """A stage's score grid by `method` (METHODS): `patching.path_patch` for exact, `attribution_patch` else."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    arguments = (model, clean_tokens, corrupted_tokens, answer_tokens, receivers, position, freeze_mlps)
    if method == "exact":
        why_not = fast_path_problem(model)
        if why_not is None:
            return path_patch(*arguments, **options)
        warnings.warn(f"{why_not}; the exact scorer runs path_patch_reference (slower, the same scores)", stacklevel=2)
        # The reference computes every sender of a pass at once; it has no chunks of senders to bound.
        options.pop("sender_chunk", None)
        return path_patch_reference(*arguments, **options)
    steps = DEFAULT_IG_STEPS if ig_steps is None else ig_steps
    return attribution_patch(*arguments, method=method, ig_steps=steps, **options)


def method_description(method: str, ig_steps: int | None) -> str:
    """How a grid was scored, as its table records it: "exact", "eap" or "eap_ig of 5 steps"."""
    return f"{method} of {ig_steps} steps" if method == "eap_ig" else method


def _batch_estimates(model, job: PatchJob, alphas: Sequence[float]):
    """LD_clean, LD_corrupt [batch] and every sender's estimated LD_patched - LD_clean [senders, batch]."""
    rows = torch.arange(job.n_prompts, device=job.clean.device)
    p = job.position
    layers = range(job.n_layers)
    wanted = [(head_output(layer), head_output(layer), lambda z: z[rows, p].detach().clone()) for layer in layers]
    # EAP-IG's line ends at the corrupted input, the one activation it needs beyond the heads' outputs at p.
    line_end = [(residual_pre(0), residual_pre(0), lambda x: x.detach().clone())] if alphas != [0.0] else []
    with torch.no_grad():
        corrupt: dict[str, torch.Tensor] = {}
        ld_corrupt = job_metric(job, _end_logits(model, job, rows, job.corrupted, _keepers(wanted + line_end, corrupt)))
        if alphas != [0.0]:  # EAP's gradient pass is the clean run itself
            clean: dict[str, torch.Tensor] = {}
            ld_clean = job_metric(job, _end_logits(model, job, rows, job.clean, _keepers(wanted, clean)))
    gradient = {}
    for alpha in alphas:
        start = [(residual_pre(0), _shift(corrupt[residual_pre(0)], alpha))] if alpha else []
        receiver_gradients, ld_run, stored = _metric_gradient(model, job, rows, start, wanted if alpha == 0 else [])
        if alpha == 0:
            clean, ld_clean = stored, ld_run
        for layer, value in _frozen_path_gradient(model, job, rows, start, receiver_gradients).items():
            gradient[layer] = gradient.get(layer, 0) + value / len(alphas)
    estimate = torch.stack(
        [
            (
                gradient[layer][:, head] * (corrupt[head_output(layer)][:, head] - clean[head_output(layer)][:, head])
            ).sum(-1)
            for layer, head in job.senders
        ]
    )
    return ld_clean, ld_corrupt, estimate


class _FinalResidualReached(Exception):
    """Ends a forward pass once the final residual stream at END is read."""


def _end_logits(model, job: PatchJob, rows, tokens: torch.Tensor, hooks) -> torch.Tensor:
    """The logits at each prompt's END [batch, d_vocab] of a run with `hooks`.

    The metric reads END alone, so the run stops at the final residual stream and only END goes through the
    final norm and the unembedding (the bridge's `ln_final` and `unembed`): a small model's unembedding at every
    position would cost more than the rest of it. The hooks at the final residual stream run first."""
    kept = {}

    def finish(resid, hook):
        kept["end"] = resid[rows, job.end]
        raise _FinalResidualReached

    try:
        model.run_with_hooks(tokens, fwd_hooks=[*hooks, (FINAL_RESIDUAL, finish)])
    except _FinalResidualReached:
        pass
    return model.unembed(model.ln_final(kept["end"][:, None]))[:, 0]


def _keepers(wanted, into: dict) -> list:
    """Hooks storing `take(activation)` under `key` in `into`, for (hook name, key, take) triples."""

    def keep(key, take):
        def hook(activation, hook):
            into[key] = take(activation)

        return hook

    return [(name, keep(key, take)) for name, key, take in wanted]


def _shift(corrupted: torch.Tensor, alpha: float):
    """A hook moving block 0's input (clean) a fraction `alpha` of the way to the corrupted one."""

    def hook(resid, hook):
        return resid + alpha * (corrupted - resid)

    return hook


def _receiver_sites(job: PatchJob) -> dict[str, list[int]]:
    """Hook name -> the receiver heads read there ([] for the final residual stream)."""
    if job.to_logits:
        return {FINAL_RESIDUAL: []}
    sites: dict[str, list[int]] = {}
    for layer, head, component in job.receivers:
        sites.setdefault(head_input(layer, component), []).append(head)
    return sites


def _at_receivers(activation: torch.Tensor, rows, p, heads: list[int]) -> torch.Tensor:
    """The receivers' part of an activation at p: [batch, d] for the residual, [batch, len(heads), d] for heads."""
    at_p = activation[rows, p]
    return at_p[:, heads] if heads else at_p


def _metric_gradient(model, job: PatchJob, rows, start, wanted):
    """dm/dx at p for every receiver site, per prompt (each prompt's metric depends on its own row only); the
    run's metric per prompt; and what `wanted` asks to store from it ((hook name, key, take) triples)."""
    probes: dict[str, torch.Tensor] = {}
    stored: dict[str, torch.Tensor] = {}

    p = job.position
    sites = _receiver_sites(job)

    def probe(name):
        # The recipe sets the receivers' inputs at p, so no receiver reaches another through them: the value
        # there is cut from what computed it, and the probe is the only way in.
        heads = sites[name] or slice(None)

        def hook(activation, hook):
            at_p = activation[rows, p]
            probes[name] = torch.zeros_like(at_p[:, heads], requires_grad=True)
            activation = activation.clone()
            if sites[name]:
                at_p = at_p.clone()
                at_p[:, heads] = at_p[:, heads].detach() + probes[name]
            else:
                at_p = at_p.detach() + probes[name]
            activation[rows, p] = at_p
            return activation

        return hook

    hooks = start + _keepers(wanted, stored) + [(name, probe(name)) for name in sites]
    with torch.enable_grad():
        metric = job_metric(job, _end_logits(model, job, rows, job.clean, hooks))
        names = list(sites)
        grads = torch.autograd.grad(metric.sum(), [probes[name] for name in names], allow_unused=True)
    receiver_gradients = {
        name: (torch.zeros_like(probes[name]) if grad is None else grad).detach()
        for name, grad in zip(names, grads, strict=True)
    }
    return receiver_gradients, metric.detach(), stored


def _frozen_path_gradient(model, job: PatchJob, rows, start, receiver_gradients) -> dict[int, torch.Tensor]:
    """Per layer [batch, n_heads, d_head]: d(sum over receivers of dm/dx . x)/dz at p through the frozen path."""
    p = job.position
    sites = _receiver_sites(job)
    probes: dict[int, torch.Tensor] = {}
    readings: list[torch.Tensor] = []

    def cut_head_outputs(layer):
        def hook(z, hook):
            probes[layer] = torch.zeros_like(z[rows, p], requires_grad=True)
            z = z.clone()
            z[rows, p] = z[rows, p].detach() + probes[layer]
            return z

        return hook

    def cut_mlp(out, hook):
        out = out.clone()
        out[rows, p] = out[rows, p].detach()
        return out

    def read(name):
        def hook(activation, hook):
            readings.append((receiver_gradients[name] * _at_receivers(activation, rows, p, sites[name])).sum())

        return hook

    hooks = list(start) + [(head_output(layer), cut_head_outputs(layer)) for layer in range(job.n_layers)]
    if job.freeze_mlps:
        hooks += [(mlp_output(layer), cut_mlp) for layer in range(job.n_layers)]
    hooks += [(name, read(name)) for name in sites]
    with torch.enable_grad():
        if job.to_logits:
            _end_logits(model, job, rows, job.clean, hooks)
        else:  # the blocks up to the highest receiver's are all it needs
            model.run_with_hooks(job.clean, fwd_hooks=hooks, stop_at_layer=max(r[0] for r in job.receivers) + 1)
        layers = sorted(probes)
        total = torch.stack(readings).sum()
        if not total.requires_grad:  # every receiver sits in layer 0, or reads its layer before any head writes
            return {layer: torch.zeros_like(probes[layer]).detach() for layer in layers}
        grads = torch.autograd.grad(total, [probes[layer] for layer in layers], allow_unused=True)
    return {
        layer: (torch.zeros_like(probes[layer]) if grad is None else grad).detach()
        for layer, grad in zip(layers, grads, strict=True)
    }
