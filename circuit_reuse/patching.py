"""Path patching with the semantics of Wang et al. (2022) as Merullo et al. (2024) implement it.

For a sender head s, receivers R and a patch position p (per prompt):

(a) run the clean input; at p replace s's output (`hook_z`) by its corrupted value, hold every other head's
    output at p at its clean value (and every MLP output at p when `freeze_mlps`), and record what the
    receivers see at p: the q, k or v vector of each receiver head, or the final residual stream ("logits");
(b) run the clean input again with only the receivers' activations at p replaced by the recorded ones, and
    read the metric LD at each prompt's last real token: the logit difference logit(correct) - logit(wrong),
    or any metric of `circuit_reuse.metrics` (`metric=`, e.g. Greater-Than's probability difference);
(c) score(s) = (LD_patched - LD_clean) / (LD_corrupt - LD_clean), every LD a mean over prompts: over all
    prompts at once ("pooled"), or over consecutive batches of prompts with the score the mean of the batches'
    scores ("batch_mean", the authors' averaging, with batches of 25).

Which heads are senders is a setting (`SENDER_SETS`); the authors' loop scores every head in the layers up to
and including the lowest receiver layer, the receiver heads excepted. A sender in a receiver layer reaches only
the receivers above it (a head reads its layer's residual stream before any head of that layer writes to it),
so a sender whose every receiver lies in its own layer changes nothing and scores exactly 0, as in that loop.

Two implementations share input validation (`prepare_job`) and the score formula (`PromptEffects.scores`):

- `path_patch_reference` does (a) and (b) literally: two full forward passes of the bridge per sender per
  batch, with hooks. It is slow and obviously right; tests and the benchmark measure the fast one against it.
- `path_patch` computes the same numbers from the model's weights, using that only position p changes and
  attention is causal:
  * the clean and corrupted runs are its own forward passes over the weights, keeping only what (a) and (b)
    read and no logits but the two answer columns at END; the corrupted run starts at the batch's first
    corrupted token, reusing the clean run's keys and values before it (the two runs agree there);
  * in (a) every head at p except s is frozen, so the residual stream at p differs from the clean one by
    s's own delta (z_corr - z_clean) W_O[s] plus, unless MLPs are frozen, the MLPs' responses to it at p.
    That is a one-position MLP chain, run for all senders (and prompts) at once from each sender's layer;
  * in (b) nothing below the lowest receiver layer changes, and only positions p..END change above it. Those
    positions are recomputed from the clean run's residual stream, attending to the clean run's cached keys
    and values for every earlier position. With p = END that is a single position per prompt.
  Each pass also carries an unpatched "clean row" through the same computation, and a sender's effect is
  measured against that row, so the fast path's own rounding cancels in LD_patched - LD_clean (a sender that
  changes nothing scores exactly 0, as in the reference).
"""

from __future__ import annotations

import math
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from circuit_reuse.hook_names import FINAL_RESIDUAL, HEAD_INPUTS, head_input, head_output, mlp_output
from circuit_reuse.metrics import LogitDifference, Metric, pair_tokens
from circuit_reuse.models import model_device
from circuit_reuse.weights import ModelWeights, forward_capturing

LOGITS = "logits"
DEFAULT_BATCH_SIZE = 32
# Rows (senders + 1) x prompts x recomputed positions per pass of the fast path. The largest activation is
# rows x d_mlp floats (0.5 GiB for GPT-2 medium in float32), so memory stays bounded whatever N is.
DEFAULT_ROW_BUDGET = 1 << 15
# Sender rows of full-vocabulary logits formed at once for a metric that needs them: LOGIT_ROWS x prompts
# rows of d_vocab floats (40 MB for 25 GPT-2 prompts).
LOGIT_ROWS = 8

Receiver = tuple[int, int, str]
Sender = tuple[int, int]

# Which heads are senders, for receivers in some layers (to the logits every head is a sender, whatever the set).
SENDER_SETS = {
    "authors": "every head in the layers up to and including the lowest receiver layer, the receivers excepted",
    "any_path": "every head in the layers below the highest receiver layer, the receivers excepted",
    "below_lowest": "every head in the layers below the lowest receiver layer",
}
DEFAULT_SENDER_SET = "authors"
# How per-prompt logit differences become a score: one quotient of means over all prompts, or the mean of the
# quotients of consecutive batches of `averaging_batch_size` prompts (the last batch may be shorter).
AVERAGINGS = ("batch_mean", "pooled")
DEFAULT_AVERAGING = "batch_mean"
AUTHORS_AVERAGING_BATCH_SIZE = 25


# --------------------------------------------------------------------------------------------------------------
# Inputs, shared by both implementations
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchJob:
    """The validated inputs of one path-patching call, on the model's device."""

    clean: torch.Tensor  # [n, seq]
    corrupted: torch.Tensor  # [n, seq]
    answers: torch.Tensor  # [n, k] the metric's tokens per prompt ((correct, wrong) for the logit difference)
    weights: torch.Tensor  # [n, k] each token's weight in the metric
    metric: Metric
    position: torch.Tensor  # [n] patch position
    end: torch.Tensor  # [n] last real token, where the logit difference is read
    receivers: tuple[Receiver, ...] | None  # None: the final residual stream ("logits")
    senders: tuple[Sender, ...]  # sorted by layer, then head
    freeze_mlps: bool
    n_layers: int
    n_heads: int
    kv_group: int = 1  # query heads per key/value group (grouped-query attention; 1 otherwise)

    @property
    def to_logits(self) -> bool:
        return self.receivers is None

    @property
    def lowest_receiver_layer(self) -> int:
        return self.n_layers if self.receivers is None else min(r[0] for r in self.receivers)

    @property
    def n_prompts(self) -> int:
        return self.clean.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[slice, PatchJob]]:
        """The same job restricted to consecutive slices of at most `batch_size` prompts, with each slice."""
        for start in range(0, self.n_prompts, batch_size):
            rows = slice(start, min(start + batch_size, self.n_prompts))
            yield (
                rows,
                PatchJob(
                    clean=self.clean[rows],
                    corrupted=self.corrupted[rows],
                    answers=self.answers[rows],
                    weights=self.weights[rows],
                    metric=self.metric,
                    position=self.position[rows],
                    end=self.end[rows],
                    receivers=self.receivers,
                    senders=self.senders,
                    freeze_mlps=self.freeze_mlps,
                    n_layers=self.n_layers,
                    n_heads=self.n_heads,
                    kv_group=self.kv_group,
                ),
            )


def sender_heads(receivers, n_layers: int, n_heads: int, sender_set: str = DEFAULT_SENDER_SET) -> tuple[Sender, ...]:
    """The senders of `sender_set` (see SENDER_SETS) for receivers "logits" or [(layer, head, component), ...].

    Sorted by layer, then head. Every head when the receivers are the logits."""
    if sender_set not in SENDER_SETS:
        raise ValueError(f"sender_set must be one of {', '.join(SENDER_SETS)}; got {sender_set!r}")
    if isinstance(receivers, str):
        return tuple((layer, head) for layer in range(n_layers) for head in range(n_heads))
    layers = [layer for layer, _, _ in receivers]
    limit = {"authors": min(layers) + 1, "any_path": max(layers), "below_lowest": min(layers)}[sender_set]
    receiver_heads = {(layer, head) for layer, head, _ in receivers}
    return tuple(
        (layer, head) for layer in range(limit) for head in range(n_heads) if (layer, head) not in receiver_heads
    )


def prepare_job(
    model,
    clean_tokens,
    corrupted_tokens,
    answer_tokens,
    receivers,
    position,
    freeze_mlps: bool = False,
    senders: Sequence[Sender] | None = None,
    end_positions=None,
    sender_set: str = DEFAULT_SENDER_SET,
    metric: Metric | None = None,
    metric_weights=None,
) -> PatchJob:
    """Check every input and bring it into one canonical form; raise ValueError saying what is wrong.

    Without `metric`, `answer_tokens` are (correct, wrong) pairs [n, 2] and the metric is their logit
    difference; with it, `answer_tokens` are the metric's tokens [n, k] and `metric_weights` [n, k] their
    weights (`circuit_reuse.metrics`).
    """
    cfg = model.cfg
    n_layers, n_heads, d_vocab = cfg.n_layers, cfg.n_heads, cfg.d_vocab
    clean = _check_tokens("clean_tokens", clean_tokens, d_vocab)
    corrupted = _check_tokens("corrupted_tokens", corrupted_tokens, d_vocab)
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean_tokens {tuple(clean.shape)} and corrupted_tokens {tuple(corrupted.shape)} must have the same "
            "shape: a corruption is a minimal change of the same prompt, padded the same way"
        )
    n, seq = clean.shape
    if seq > cfg.n_ctx:
        raise ValueError(f"prompts have {seq} tokens but the model's context holds {cfg.n_ctx}")
    answers = _check_int_tensor("answer_tokens", answer_tokens)
    if metric is None:
        if answers.shape != (n, 2):
            raise ValueError(
                f"answer_tokens must have shape [batch, 2] = ({n}, 2) (correct, wrong); got {tuple(answers.shape)}"
            )
        metric, (answers, weights) = LogitDifference(), pair_tokens(answers)
    else:
        weights = torch.as_tensor(metric_weights, dtype=torch.float32) if metric_weights is not None else None
        if answers.ndim != 2 or answers.shape[0] != n or weights is None or weights.shape != answers.shape:
            raise ValueError(
                f"with a metric, answer_tokens and metric_weights must both have shape [batch, k] with batch = {n}"
            )
    if answers.min() < 0 or answers.max() >= d_vocab:
        raise ValueError(f"answer_tokens must be token ids in [0, {d_vocab})")
    if not isinstance(freeze_mlps, bool):
        raise ValueError(f"freeze_mlps must be True or False, not {freeze_mlps!r}")

    end = _end_positions(model, clean, corrupted, end_positions)
    if position is None:
        position = end.clone()
    elif isinstance(position, int) and not isinstance(position, bool):
        position = torch.full((n,), position, dtype=torch.long)
    else:
        position = _check_int_tensor("position", position)
        if position.ndim == 0:
            position = position.expand(n).clone()
        if position.shape != (n,):
            raise ValueError(
                f"position must be an int or a LongTensor of shape [batch] = ({n},); got {tuple(position.shape)}"
            )
    if position.min() < 0:
        raise ValueError("position must be >= 0 (negative indices are not supported)")
    beyond = (position > end).nonzero().flatten()
    if len(beyond):
        i = int(beyond[0])
        raise ValueError(
            f"position {int(position[i])} lies beyond prompt {i}'s last real token ({int(end[i])}); "
            f"{len(beyond)} prompt(s) affected"
        )

    receiver_tuple = _check_receivers(receivers, n_layers, n_heads)
    if receiver_tuple is None and not torch.equal(position, end):
        raise ValueError(
            "receivers='logits' patches the final residual stream, which only reaches the logit difference at "
            "each prompt's last real token: position must be that token (pass position=None for it)"
        )
    eligible = sender_heads(LOGITS if receiver_tuple is None else receiver_tuple, n_layers, n_heads, sender_set)
    if senders is None:
        sender_tuple = eligible
    else:
        sender_tuple = tuple(sorted({_check_sender(s, eligible, sender_set) for s in senders}))

    device = model_device(model)
    return PatchJob(
        clean=clean.to(device),
        corrupted=corrupted.to(device),
        answers=answers.to(device),
        weights=weights.to(device),
        metric=metric,
        position=position.to(device),
        end=end.to(device),
        receivers=receiver_tuple,
        senders=sender_tuple,
        freeze_mlps=freeze_mlps,
        n_layers=n_layers,
        n_heads=n_heads,
        kv_group=n_heads // (getattr(cfg, "n_key_value_heads", None) or n_heads),
    )


def _check_int_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch LongTensor, not {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must hold integers (torch.long); got {value.dtype}")
    return value.detach().to(torch.long).cpu()


def _check_tokens(name: str, value, d_vocab: int) -> torch.Tensor:
    tokens = _check_int_tensor(name, value)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must have shape [batch, seq] with batch, seq >= 1; got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= d_vocab:
        raise ValueError(f"{name} must be token ids in [0, {d_vocab})")
    return tokens


def _end_positions(model, clean: torch.Tensor, corrupted: torch.Tensor, end_positions) -> torch.Tensor:
    """Each prompt's last real token: given, or found as the token before the trailing right-padding."""
    n, seq = clean.shape
    if end_positions is not None:
        end = _check_int_tensor("end_positions", end_positions)
        if end.shape != (n,):
            raise ValueError(f"end_positions must have shape [batch] = ({n},); got {tuple(end.shape)}")
        if end.min() < 0 or end.max() >= seq:
            raise ValueError(f"end_positions must lie in [0, {seq})")
        return end
    pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)
    if pad is None:
        pad = model.cfg.eos_token_id
    ends = []
    for name, tokens in (("clean_tokens", clean), ("corrupted_tokens", corrupted)):
        real = tokens != pad
        if not real.any(dim=1).all():
            raise ValueError(f"{name}: some prompt consists only of padding (token {pad})")
        # The last non-pad token; right padding means everything after it is padding.
        ends.append(seq - 1 - real.flip(1).to(torch.int8).argmax(dim=1))
    differ = (ends[0] != ends[1]).nonzero().flatten()
    if len(differ):
        i = int(differ[0])
        raise ValueError(
            f"prompt {i} has {int(ends[0][i]) + 1} real tokens clean but {int(ends[1][i]) + 1} corrupted; path "
            "patching needs corruptions of the same length (if a prompt really ends in the pad token "
            f"{pad}, pass end_positions)"
        )
    return ends[0]


def _check_receivers(receivers, n_layers: int, n_heads: int) -> tuple[Receiver, ...] | None:
    if isinstance(receivers, str):
        if receivers != LOGITS:
            raise ValueError(f"receivers must be 'logits' or a list of (layer, head, component); got {receivers!r}")
        return None
    try:
        items = list(receivers)
    except TypeError:
        raise ValueError(
            f"receivers must be 'logits' or a list of (layer, head, component); got {receivers!r}"
        ) from None
    if not items:
        raise ValueError("receivers is empty: name at least one (layer, head, component)")
    checked = set()
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"each receiver must be (layer, head, component); got {item!r}")
        layer, head, component = item
        if not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"receiver {item!r}: layer must be an int in [0, {n_layers})")
        if not isinstance(head, int) or not 0 <= head < n_heads:
            raise ValueError(f"receiver {item!r}: head must be an int in [0, {n_heads})")
        if component not in HEAD_INPUTS:
            raise ValueError(f"receiver {item!r}: component must be one of {', '.join(HEAD_INPUTS)}")
        checked.add((layer, head, component))
    return tuple(sorted(checked))


def _check_sender(sender, eligible: tuple[Sender, ...], sender_set: str) -> Sender:
    if not isinstance(sender, (tuple, list)) or len(sender) != 2:
        raise ValueError(f"each sender must be (layer, head); got {sender!r}")
    if tuple(sender) not in eligible:
        raise ValueError(
            f"sender {tuple(sender)!r} is not in the sender set {sender_set!r} of these receivers "
            f"({SENDER_SETS[sender_set]})"
        )
    return (int(sender[0]), int(sender[1]))


# --------------------------------------------------------------------------------------------------------------
# Score, shared by both implementations
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PromptEffects:
    """Per-prompt logit differences, filled batch by batch; the scores are formed once every prompt is in, so
    how prompts are batched for computing never changes them."""

    n_prompts: int
    senders: tuple[Sender, ...]
    clean: torch.Tensor = field(init=False)  # [n_prompts] LD_clean
    corrupt: torch.Tensor = field(init=False)  # [n_prompts] LD_corrupt
    patched_minus_clean: torch.Tensor = field(init=False)  # [n_senders, n_prompts] LD_patched - LD_clean

    def __post_init__(self):
        self.clean = torch.zeros(self.n_prompts, dtype=torch.float64)
        self.corrupt = torch.zeros(self.n_prompts, dtype=torch.float64)
        self.patched_minus_clean = torch.zeros(len(self.senders), self.n_prompts, dtype=torch.float64)
        self._row = {sender: i for i, sender in enumerate(self.senders)}

    def add_baselines(self, prompts: slice, ld_clean: torch.Tensor, ld_corrupt: torch.Tensor) -> None:
        self.clean[prompts] = ld_clean.double().cpu()
        self.corrupt[prompts] = ld_corrupt.double().cpu()

    def add_senders(self, prompts: slice, senders: Sequence[Sender], patched_minus_clean: torch.Tensor) -> None:
        """`patched_minus_clean`: [len(senders), batch], LD_patched - LD_clean per sender and prompt."""
        rows = [self._row[sender] for sender in senders]
        self.patched_minus_clean[rows, prompts] = patched_minus_clean.double().cpu()

    def scores(self, n_layers: int, n_heads: int, averaging: str, averaging_batch_size: int) -> torch.Tensor:
        """score = (LD_patched - LD_clean) / (LD_corrupt - LD_clean), float64 [n_layers, n_heads], NaN for heads
        that are not senders. "pooled": every LD the mean over all prompts. "batch_mean": the same quotient per
        consecutive batch of `averaging_batch_size` prompts, then the mean of the batches' quotients."""
        step = self.n_prompts if averaging == "pooled" else averaging_batch_size
        quotients, denominators = [], []
        for start in range(0, self.n_prompts, step):
            prompts = slice(start, start + step)
            denominator = (self.corrupt[prompts] - self.clean[prompts]).mean()
            quotients.append(self.patched_minus_clean[:, prompts].mean(dim=1) / denominator)
            denominators.append(float(denominator))
        if any(d == 0 or not math.isfinite(d) for d in denominators):
            warnings.warn(
                f"mean logit difference is the same on clean and corrupted prompts ({float(self.clean.mean()):.6g} "
                f"over all prompts) in some batch of {step} prompts; the path patching scores are undefined "
                "(inf or nan)",
                RuntimeWarning,
                stacklevel=3,
            )
        per_sender = torch.stack(quotients).mean(dim=0)
        grid = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        for (layer, head), score in zip(self.senders, per_sender, strict=True):
            grid[layer, head] = score
        return grid


def job_metric(job: PatchJob, logits_at_end: torch.Tensor) -> torch.Tensor:
    """The job's metric per prompt, from logits [batch, d_vocab] at each prompt's last token."""
    return job.metric(logits_at_end, job.answers, job.weights)


def _progress(job: PatchJob, batch_size: int, progress: bool, desc: str) -> tqdm:
    n_batches = math.ceil(job.n_prompts / batch_size)
    return tqdm(total=n_batches * len(job.senders), unit="sender", desc=desc, disable=not progress, smoothing=0.1)


def _check_scoring(batch_size: int, averaging: str, averaging_batch_size: int) -> None:
    for name, value in (("batch_size", batch_size), ("averaging_batch_size", averaging_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if averaging not in AVERAGINGS:
        raise ValueError(f"averaging must be one of {', '.join(AVERAGINGS)}; got {averaging!r}")


# --------------------------------------------------------------------------------------------------------------
# Reference: the recipe, literally
# --------------------------------------------------------------------------------------------------------------


def _run_storing(model, tokens: torch.Tensor, wanted: Sequence[tuple[str, str, Callable]]) -> tuple[torch.Tensor, dict]:
    """Run the bridge once and return its logits and, for each (hook, key, take), `take(activation)` as key."""
    stored = {}
    by_hook: dict[str, list[tuple[str, Callable]]] = {}
    for hook_name, key, take in wanted:
        by_hook.setdefault(hook_name, []).append((key, take))

    def keeper(takers):
        def hook(activation, hook):
            for key, take in takers:
                stored[key] = take(activation)

        return hook

    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, keeper(takers)) for name, takers in by_hook.items()])
    return logits, stored


def path_patch_reference(
    model,
    clean_tokens,
    corrupted_tokens,
    answer_tokens,
    receivers,
    position,
    freeze_mlps: bool = False,
    *,
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
    """Path patching exactly as the recipe reads: two full forward passes of the bridge per sender per batch.

    Same arguments and result as `path_patch` (float64 [n_layers, n_heads] on the CPU, NaN for heads that are
    not senders); `senders` restricts the work to some heads (the benchmark times a sample). Like the authors'
    loop it runs every sender of the set, including those in a receiver layer that reach no receiver (they
    score exactly 0). Slow by design.
    """
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
    effects = PromptEffects(job.n_prompts, job.senders)
    with torch.no_grad(), _progress(job, batch_size, progress, "path patching (reference)") as bar:
        for prompts, batch in job.batches(batch_size):
            _reference_batch(model, batch, prompts, effects, bar)
    return effects.scores(job.n_layers, job.n_heads, averaging, averaging_batch_size)


def _reference_batch(model, job: PatchJob, prompts: slice, effects: PromptEffects, bar: tqdm) -> None:
    rows = torch.arange(job.n_prompts, device=job.clean.device)
    p, end = job.position, job.end

    def at_p(activation):
        return activation[rows, p].clone()

    # 1. Cache a clean and a corrupted run: every head's z and every MLP output at p.
    wanted = [(name(layer), name(layer), at_p) for layer in range(job.n_layers) for name in (head_output, mlp_output)]
    clean_logits, clean = _run_storing(model, job.clean, wanted)
    corrupt_logits, corrupt = _run_storing(model, job.corrupted, wanted)
    ld_clean = job_metric(job, clean_logits[rows, end])
    ld_corrupt = job_metric(job, corrupt_logits[rows, end])
    effects.add_baselines(prompts, ld_clean, ld_corrupt)
    del clean_logits, corrupt_logits

    receiver_hooks = _receiver_hook_names(job)
    for sender in job.senders:
        recorded = _reference_sender_run(model, job, sender, clean, corrupt, receiver_hooks, rows)
        ld_patched = _reference_receiver_run(model, job, recorded, rows)
        effects.add_senders(prompts, [sender], (ld_patched - ld_clean)[None])
        bar.update(1)


def _receiver_hook_names(job: PatchJob) -> dict[str, list[int]]:
    """Hook name -> receiver heads read or written there ({final residual: []} for logits). A k or v receiver
    is its head's key/value group, the index of hook_k/hook_v under grouped-query attention."""
    if job.to_logits:
        return {FINAL_RESIDUAL: []}
    names: dict[str, list[int]] = {}
    for layer, head, component in job.receivers:
        names.setdefault(head_input(layer, component), []).append(head if component == "q" else head // job.kv_group)
    return names


def _reference_sender_run(model, job, sender, clean, corrupt, receiver_hooks, rows) -> dict[str, torch.Tensor]:
    """Step (a): clean run with s corrupted and everything else frozen at p; return the receivers' inputs at p."""
    p = job.position
    sender_layer, sender_head = sender
    recorded: dict[str, torch.Tensor] = {}

    def set_head_outputs(layer):
        def hook(z, hook):
            z = z.clone()
            z[rows, p] = clean[head_output(layer)]
            if layer == sender_layer:
                z[rows, p, sender_head] = corrupt[head_output(layer)][:, sender_head]
            return z

        return hook

    def freeze_mlp(layer):
        def hook(out, hook):
            out = out.clone()
            out[rows, p] = clean[mlp_output(layer)]
            return out

        return hook

    def record(name, heads):
        def hook(activation, hook):
            recorded[name] = activation[rows, p][:, heads].clone() if heads else activation[rows, p].clone()

        return hook

    hooks = [(head_output(layer), set_head_outputs(layer)) for layer in range(job.n_layers)]
    if job.freeze_mlps:
        hooks += [(mlp_output(layer), freeze_mlp(layer)) for layer in range(job.n_layers)]
    hooks += [(name, record(name, heads)) for name, heads in receiver_hooks.items()]
    model.run_with_hooks(job.clean, fwd_hooks=hooks)
    return recorded


def _reference_receiver_run(model, job, recorded, rows) -> torch.Tensor:
    """Step (b): clean run with only the receivers' activations at p replaced; LD per prompt."""
    p = job.position

    def patch(name, heads):
        def hook(activation, hook):
            activation = activation.clone()
            if heads:
                for i, head in enumerate(heads):
                    activation[rows, p, head] = recorded[name][:, i]
            else:
                activation[rows, p] = recorded[name]
            return activation

        return hook

    hooks = [(name, patch(name, heads)) for name, heads in _receiver_hook_names(job).items()]
    logits = model.run_with_hooks(job.clean, fwd_hooks=hooks)
    return job_metric(job, logits[rows, job.end])


# --------------------------------------------------------------------------------------------------------------
# Fast: the model's weights, one position per sender where the recipe allows it
# --------------------------------------------------------------------------------------------------------------


def attention_out(
    weights: ModelWeights,
    layer: int,
    resid_pre: torch.Tensor,
    positions: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    prefix_mask: torch.Tensor,
    overrides: Sequence[tuple[int, str, torch.Tensor]] = (),
) -> torch.Tensor:
    """A block's attention output for a window of consecutive positions, given the keys/values before it.

    resid_pre [R, B, W, d]: R variants (senders) of B prompts, W consecutive positions starting at each prompt's
    window start (R may be 1 when the variants differ only in their overrides); positions [B, W] are the
    window's absolute positions. prefix_k/v [B, n_kv_heads, P, d_head] (keys rotated) and prefix_mask [B, P]
    (True for keys before the window start) are shared by all R variants: the clean run's keys and values,
    which nothing in the window can change.
    overrides: (head, component, [R, B, d_head]) replace that head's q, or its group's k or v, at the window's
    first position (before the rotation, as the bridge's hook_q/k/v hold them).
    """
    w = weights.layer(layer)
    n_inputs, B, W, d = resid_pre.shape
    R = max([n_inputs] + [value.shape[0] for _, _, value in overrides])
    dh = weights.d_head
    qkv = weights.project_qkv(layer, weights.norm(resid_pre, w.norm1_w, w.norm1_b))  # [n_inputs, B, W, *, dh]
    if n_inputs < R:
        # One residual stream shared by all variants, which differ only in their overrides: project it once.
        qkv = qkv.expand(R, B, W, -1, dh).clone()
    for head, component, value in overrides:
        qkv[:, :, 0, weights.qkv_index(head, component)] = value
    q, k, v = weights.split_qkv(qkv)
    q, k = weights.rotate(q, positions), weights.rotate(k, positions)
    k, v = weights.expand_groups(k, 3), weights.expand_groups(v, 3)  # [R, B, W, H, dh]
    prefix_k, prefix_v = weights.expand_groups(prefix_k, 1), weights.expand_groups(prefix_v, 1)
    H = weights.n_heads
    q = q * weights.scale
    # Scores against the prefix: prompt b's keys are shared by every variant, so fold R and W into the rows.
    q_by_prompt = q.permute(1, 3, 0, 2, 4).reshape(B, H, R * W, dh)
    prefix_scores = (q_by_prompt @ prefix_k.transpose(-1, -2)).masked_fill(~prefix_mask[:, None, None, :], -math.inf)
    prefix_scores = prefix_scores.reshape(B, H, R, W, -1).permute(2, 0, 1, 3, 4)  # [R, B, H, W, P]
    # Scores within the window, causal.
    q_h, k_h, v_h = (t.permute(0, 1, 3, 2, 4) for t in (q, k, v))  # [R, B, H, W, dh]
    window_scores = q_h @ k_h.transpose(-1, -2)
    if W > 1:
        future = torch.ones(W, W, dtype=torch.bool, device=resid_pre.device).triu(1)
        window_scores = window_scores.masked_fill(future, -math.inf)
    pattern = torch.cat([prefix_scores, window_scores], dim=-1).softmax(dim=-1)
    P = prefix_k.shape[2]
    prefix_pattern = pattern[..., :P].permute(1, 2, 0, 3, 4).reshape(B, H, R * W, P)
    z = (prefix_pattern @ prefix_v).reshape(B, H, R, W, dh).permute(2, 0, 3, 1, 4)  # [R, B, W, H, dh]
    z = z + (pattern[..., P:] @ v_h).permute(0, 1, 3, 2, 4)
    return weights.attention_output(layer, z)


def run_window(
    weights: ModelWeights,
    first_layer: int,
    resid: torch.Tensor,
    positions: torch.Tensor,
    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
    prefix_mask: torch.Tensor,
    overrides: dict[int, list[tuple[int, str, torch.Tensor]]] | None = None,
) -> torch.Tensor:
    """Run blocks first_layer.. on a window of positions; return the final residual stream [R, B, W, d].

    `prefix_kv[layer]` holds the clean keys and values of the positions before the window at that layer.
    """
    overrides = overrides or {}
    for layer in range(first_layer, weights.n_layers):
        prefix_k, prefix_v = prefix_kv[layer]
        attn_out = attention_out(
            weights, layer, resid, positions, prefix_k, prefix_v, prefix_mask, overrides.get(layer, ())
        )
        resid = weights.block_output(layer, resid, attn_out)
    return resid


def metric_from_residual(weights: ModelWeights, job: PatchJob, final_resid: torch.Tensor) -> torch.Tensor:
    """The job's metric per row from the final residual stream [..., B, d] at each prompt's last token.

    A metric linear in the logits (the logit difference) needs only its tokens' unembedding columns: the
    weighted sum of W_U[:, token] is one direction per prompt. Any other (the probability difference) needs
    the whole vocabulary's logits, computed for LOGIT_ROWS rows at a time to bound memory.
    """
    x = weights.final_norm(final_resid)
    W_U, b_U = weights.W_U, weights.b_U
    if job.metric.linear:
        token_weights = job.weights.to(W_U.dtype)
        direction = torch.einsum("dbk,bk->bd", W_U[:, job.answers], token_weights)  # [B, d]
        bias = (b_U[job.answers] * token_weights).sum(-1)
        return (x * direction).sum(-1) + bias
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])  # [R, B, d]
    values = [job.metric(rows @ W_U + b_U, job.answers, job.weights) for rows in flat.split(LOGIT_ROWS)]
    return torch.cat(values).reshape(x.shape[:-1])


@dataclass
class CleanCache:
    """What the fast path keeps from one batch's clean and corrupted runs (all at the patch position p unless
    said otherwise)."""

    ld_clean: torch.Tensor  # [B]
    ld_corrupt: torch.Tensor  # [B]
    z_delta: dict[int, torch.Tensor]  # sender layer -> z_corrupt - z_clean, [B, H, d_head]
    resid_pre: dict[int, torch.Tensor]  # receiver layer -> clean residual stream, [B, d]
    resid_mid: dict[int, torch.Tensor]  # MLP layer -> the clean residual stream the MLP reads, [B, d]
    final: torch.Tensor | None = None  # logits: the clean final residual stream, [B, d]
    window: torch.Tensor | None = None  # q/k/v: clean residual stream at the lowest receiver layer at p.., [1, B, W, d]
    window_positions: torch.Tensor | None = None  # [B, W]: the window's positions p, p+1, ...
    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # clean k, v before p
    prefix_mask: torch.Tensor | None = None  # [B, P]: key position < p
    end_in_window: torch.Tensor | None = None  # [B]: the last real token's index in the window


def mlp_layers(job: PatchJob) -> range:
    """Layers whose MLP at p responds to a sender's change on the way to the receivers (step a)."""
    if job.freeze_mlps or not job.senders:
        return range(0)
    last = job.n_layers if job.to_logits else max(r[0] for r in job.receivers)
    return range(job.senders[0][0], last)


def receiver_layers(job: PatchJob) -> list[int]:
    return [] if job.to_logits else sorted({r[0] for r in job.receivers})


def clean_cache(weights: ModelWeights, job: PatchJob) -> CleanCache:
    """One clean and one corrupted forward pass, keeping only what steps (a) and (b) need.

    The corrupted run recomputes only the positions from the batch's first corrupted token on (at most the
    earliest END): before it the two runs are the same, so it reuses the clean run's keys and values there.
    """
    rows = torch.arange(job.n_prompts, device=job.clean.device)
    p, T = job.position, job.clean.shape[1]
    differs = job.clean != job.corrupted
    first_difference = torch.where(differs.any(dim=1), differs.to(torch.int8).argmax(dim=1), T)
    shared = int(torch.minimum(first_difference, job.end).min())
    sender_layers = set(layer for layer, _ in job.senders)
    mid_layers = set(mlp_layers(job))
    pre_layers = set(receiver_layers(job))
    lowest = job.lowest_receiver_layer
    prefix_len = int(p.max())
    # Positions p, p+1, ... as far as the longest window. Indices past the sequence are clamped; they lie after
    # every prompt's last token, so causal attention never lets a real token read them.
    width = int((job.end - p).max()) + 1
    window_index = (p[:, None] + torch.arange(width, device=p.device)).clamp(max=T - 1)
    # Where the corrupted run's z at p lies among its computed positions (a prompt whose p lies before them has
    # the clean z there, and its delta is set to 0 below).
    p_corrupt = (p - shared).clamp(min=0)

    def keep_clean(stored: dict):
        def take(what: str, layer: int, activation: torch.Tensor) -> None:
            if what == "z" and layer in sender_layers:
                stored["z", layer] = activation[rows, p]
            elif what == "resid_mid" and layer in mid_layers:
                stored["mid", layer] = activation[rows, p]
            elif what == "resid_pre" and layer in pre_layers:
                stored["pre", layer] = activation[rows, p]
            if what in ("k", "v") and shared:
                stored["shared", what, layer] = activation[:, :shared]
            if job.to_logits or layer < lowest:
                return
            if what == "resid_pre" and layer == lowest:
                stored["window"] = activation[rows[:, None], window_index][None]
            elif what in ("k", "v"):
                # Keys and values of positions before p (as far as the latest p), per group: [B, G, P, d_head].
                stored[what, layer] = activation[:, :prefix_len].permute(0, 2, 1, 3).contiguous()

        return take

    def keep_corrupt(stored: dict):
        def take(what: str, layer: int, activation: torch.Tensor) -> None:
            if what == "z" and layer in sender_layers:
                stored["z", layer] = activation[rows, p_corrupt]

        return take

    clean, corrupt = {}, {}
    clean_final = forward_capturing(weights, job.clean, keep_clean(clean))
    ld_clean = metric_from_residual(weights, job, clean_final[rows, job.end])
    shared_kv = (
        {layer: (clean["shared", "k", layer], clean["shared", "v", layer]) for layer in range(job.n_layers)}
        if shared
        else None
    )
    corrupt_final = forward_capturing(weights, job.corrupted, keep_corrupt(corrupt), shared, shared_kv)
    ld_corrupt = metric_from_residual(weights, job, corrupt_final[rows, job.end - shared])
    del corrupt_final, shared_kv
    # Causal attention: a prompt corrupted only after p has the clean z at p. Exactly, whatever the rounding of
    # the two runs, so such senders score exactly 0 as in the reference.
    unchanged_at_p = (p < first_difference)[:, None, None]

    cache = CleanCache(
        ld_clean=ld_clean,
        ld_corrupt=ld_corrupt,
        z_delta={
            layer: torch.where(unchanged_at_p, 0.0, corrupt["z", layer] - clean["z", layer]) for layer in sender_layers
        },
        resid_pre={layer: clean["pre", layer] for layer in pre_layers},
        resid_mid={layer: clean["mid", layer] for layer in mid_layers},
        final=clean_final[rows, p] if job.to_logits else None,
    )
    if not job.to_logits:
        cache.window = clean["window"]
        cache.window_positions = window_index
        cache.prefix_kv = {layer: (clean["k", layer], clean["v", layer]) for layer in range(lowest, job.n_layers)}
        cache.prefix_mask = torch.arange(prefix_len, device=p.device)[None, :] < p[:, None]
        cache.end_in_window = job.end - p
    return cache


def receivers_after_sender_patch(weights: ModelWeights, job: PatchJob, cache: CleanCache, senders: Sequence[Sender]):
    """Step (a) for a group of senders (sorted by layer), all at once; row 0 is the unpatched clean run.

    Returns, for "logits", the final residual stream at p [1 + S, B, d]; otherwise {layer: [(head, component,
    [1 + S, B, d_head])]}, the receivers' q/k/v at p. Every head at p other than the sender is frozen, so the
    residual stream at p is the clean one plus `delta`: the sender's own change, then the MLPs' responses
    (in a parallel block the MLP reads the block's input, so it responds to the changes of the layers below).
    """
    R, B, d = 1 + len(senders), job.n_prompts, weights.d_model
    dtype = cache.z_delta[senders[0][0]].dtype
    delta = torch.zeros(R, B, d, dtype=dtype, device=job.clean.device)
    layers = [layer for layer, _ in senders]
    last = job.n_layers if job.to_logits else max(receiver_layers(job))
    frozen = job.freeze_mlps
    receivers_at = {} if job.to_logits else _receivers_by_layer(job)
    recorded = {}
    for layer in range(senders[0][0], last + 1):
        if layer in receivers_at:
            heads_components = receivers_at[layer]
            w = weights.layer(layer)
            x = weights.norm(cache.resid_pre[layer] + delta, w.norm1_w, w.norm1_b)
            W_cols, b_cols = weights.qkv_columns(layer, heads_components)
            values = torch.addmm(b_cols, x.reshape(R * B, d), W_cols).reshape(R, B, len(heads_components), -1)
            recorded[layer] = [(h, c, values[:, :, i]) for i, (h, c) in enumerate(heads_components)]
        if layer == last:
            break
        # Senders of this layer are the rows first..stop-1 (sorted by layer); their change enters at p here.
        first, stop = 1 + bisect_left(layers, layer), 1 + bisect_right(layers, layer)
        mlp_response = None
        if not frozen:
            # The MLP at p sees the senders' change; rows of later senders are still clean and skipped. Row 0's
            # output is subtracted rather than the cached one, so a row that changed nothing stays exactly 0.
            # A parallel block's MLP reads the stream before this layer's senders write to it.
            if weights.parallel:
                mlp_response = _mlp_response(weights, layer, cache.resid_mid[layer] + delta[:stop])
        if stop > first:
            heads = [head for _, head in senders[first - 1 : stop - 1]]
            z_delta = cache.z_delta[layer][:, heads].transpose(0, 1)  # [S_l, B, d_head]
            delta[first:stop] += torch.bmm(z_delta, weights.layer(layer).W_O[heads])
        if not frozen:
            if not weights.parallel:
                mlp_response = _mlp_response(weights, layer, cache.resid_mid[layer] + delta[:stop])
            delta[:stop] += mlp_response
    if job.to_logits:
        return cache.final + delta
    return recorded


def _mlp_response(weights: ModelWeights, layer: int, streams: torch.Tensor) -> torch.Tensor:
    """Each row's MLP output at p minus row 0's (the clean run's)."""
    out = weights.mlp_out(layer, streams)
    return out - out[:1]


def _receivers_by_layer(job: PatchJob) -> dict[int, list[tuple[int, str]]]:
    by_layer: dict[int, list[tuple[int, str]]] = {}
    for layer, head, component in job.receivers:
        by_layer.setdefault(layer, []).append((head, component))
    return by_layer


def patched_metric(weights: ModelWeights, job: PatchJob, cache: CleanCache, recorded) -> torch.Tensor:
    """Step (b): LD [1 + S, B] with only the receivers' activations at p replaced by the recorded ones."""
    if job.to_logits:
        return metric_from_residual(weights, job, recorded)
    # Nothing below the lowest receiver layer changes, nor anything before p: run positions p..END from there.
    final = run_window(
        weights,
        job.lowest_receiver_layer,
        cache.window,
        cache.window_positions,
        cache.prefix_kv,
        cache.prefix_mask,
        recorded,
    )
    rows = torch.arange(job.n_prompts, device=final.device)
    return metric_from_residual(weights, job, final[:, rows, cache.end_in_window])


def path_patch(
    model,
    clean_tokens,
    corrupted_tokens,
    answer_tokens,
    receivers,
    position,
    freeze_mlps: bool = False,
    *,
    senders: Sequence[Sender] | None = None,
    sender_set: str = DEFAULT_SENDER_SET,
    averaging: str = DEFAULT_AVERAGING,
    averaging_batch_size: int = AUTHORS_AVERAGING_BATCH_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    sender_chunk: int | None = None,
    end_positions=None,
    metric: Metric | None = None,
    metric_weights=None,
    progress: bool = True,
) -> torch.Tensor:
    """Path-patching scores of every sender head for the given receivers; float64 [n_layers, n_heads] on the CPU.

    clean_tokens, corrupted_tokens: LongTensor [batch, seq], right-padded where lengths differ.
    answer_tokens: LongTensor [batch, 2], (correct, wrong), scored by their logit difference; or, with `metric`
    (`circuit_reuse.metrics`), the metric's tokens [batch, k] with `metric_weights` [batch, k] (Greater-Than's
    probability difference: every year ending, +1 after the start year and -1 up to it).
    receivers: "logits" (the final residual stream) or a list of (layer, head, component), component q, k or v.
    position: int, LongTensor [batch] or None (each prompt's last real token): where the path is patched.
    freeze_mlps: also hold every MLP output at the patch position at its clean value in step (a).
    senders: compute only these (layer, head), which must belong to the sender set; default the whole set.
    sender_set: which heads are senders (SENDER_SETS): "authors" (default), "any_path" or "below_lowest".
    averaging: "batch_mean" (default, the authors': the mean of the scores of consecutive batches of
    `averaging_batch_size` prompts, 25 by default) or "pooled" (one score from means over all prompts).
    batch_size: prompts per clean/corrupted run. sender_chunk: senders per pass (default: as many as fit in
    DEFAULT_ROW_BUDGET rows); both bound memory and neither changes the result beyond rounding.
    end_positions: each prompt's last real token, where the logit difference is read; default: the token before
    the right-padding (the tokenizer's pad token).
    Heads that are not senders score NaN.
    """
    _check_scoring(batch_size, averaging, averaging_batch_size)
    if sender_chunk is not None and (not isinstance(sender_chunk, int) or sender_chunk < 1):
        raise ValueError(f"sender_chunk must be a positive int or None; got {sender_chunk!r}")
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
    weights = ModelWeights(model)
    effects = PromptEffects(job.n_prompts, job.senders)
    with torch.no_grad(), _progress(job, batch_size, progress, "path patching") as bar:
        for prompts, batch in job.batches(batch_size):
            cache = clean_cache(weights, batch)
            effects.add_baselines(prompts, cache.ld_clean, cache.ld_corrupt)
            chunk = sender_chunk or _default_chunk(batch)
            for start in range(0, len(batch.senders), chunk):
                group = batch.senders[start : start + chunk]
                recorded = receivers_after_sender_patch(weights, batch, cache, group)
                ld = patched_metric(weights, batch, cache, recorded)
                effects.add_senders(prompts, group, ld[1:] - ld[:1])
                bar.update(len(group))
    return effects.scores(job.n_layers, job.n_heads, averaging, averaging_batch_size)


def _default_chunk(job: PatchJob) -> int:
    """Senders per pass so that (senders + 1) x prompts x recomputed positions stays within the row budget."""
    width = 1 if job.to_logits else int((job.end - job.position).max()) + 1
    return max(1, DEFAULT_ROW_BUDGET // (job.n_prompts * width) - 1)
