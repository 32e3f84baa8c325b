"""Time the fast path patching against the literal reference on a released model's shape (GPT-2 medium's by default).

A seeded random model with the shape of --architecture (default GPT-2 medium: 24 layers x 16 heads, d_model
1024; the library's random stand-in, whose shape is checked against the real config where one is given; any
shipped architecture of another family, e.g. pythia-160m, smollm2-135m, qwen2.5-0.5b, with its own blocks) runs
N Colored Objects prompts (62 real tokens each, the library's generator with the real GPT-2 tokenizer; a
stand-in of another family takes that vocabulary). For three stages (the logits; the queries of
three late mover heads at END; the keys and values of the paper's inhibition heads at the question's object)
and a fourth on N Greater-Than prompts scored by their probability difference (the logits stage, where the
fast path must form every sender's full-vocabulary logits), it times the reference on a fixed sample of
senders and the
fast implementation on every sender of the stage, on the same inputs, and prints a table: seconds per sender,
their ratio, the largest score difference on the sampled senders, peak memory, and the time the paper's whole
workload would take with each implementation.

    python scripts/benchmark_patching.py                      # CPU, N = 32, 4 reference senders per stage
    python scripts/benchmark_patching.py --device cuda --n-prompts 100
    python scripts/benchmark_patching.py --architecture smollm2-135m  # another family; heads at the same depth
    python scripts/benchmark_patching.py --sender-set below_lowest   # another sender set (default: the authors')
    python scripts/benchmark_patching.py --method eap_ig --ig-steps 5   # attribution patching beside the fast path

With --method eap or eap_ig it times attribution patching (`circuit_reuse.attribution`) on every sender of each
stage beside the fast exact path instead of the reference, and prints each one's seconds for the stage, their
ratio, and how far the estimate is from the exact scores (largest difference, Spearman rank correlation).

Needs the GPT-2 tokenizer: $CIRCUIT_REUSE_TOKENIZER (or --tokenizer); $CIRCUIT_REUSE_GPT2_CONFIGS (optional)
lets it check the shape against the real config.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from circuit_reuse import patching
from circuit_reuse.attribution import DEFAULT_IG_STEPS, METHODS, attribution_patch
from circuit_reuse.datasets import make_dataset
from circuit_reuse.families import architecture, architectures
from circuit_reuse.models import ModelSpec, cache_model, load_model, model_device, resolve_tokenizer_dir
from circuit_reuse.paper import PAPER_HEADS
from circuit_reuse.statistics import spearman

DEFAULT_ARCHITECTURE = "gpt2-medium"
MEDIUM = PAPER_HEADS["gpt2-medium"]
# q receivers for the query stage: three of the paper's GPT-2 medium mover heads (layers 15-17), at END.
MOVER_QUERIES = [(layer, head) for layer, head in MEDIUM["movers"][:3]]
# k and v receivers for the key/value stage: the paper's inhibition heads, at the question's object, as in the
# Colored Objects stage that finds induction and duplicate-token heads.
INHIBITION_HEADS = list(MEDIUM["inhibition"])
# stage -> (the dataset role patched, the task whose prompts and metric it uses); receivers from `stage_receivers`.
# Greater-Than's probability difference needs every sender's full-vocabulary logits at END.
STAGES = {
    "logits": ("END", "colored_objects"),
    "query": ("END", "colored_objects"),
    "keyvalue": ("question_object", "colored_objects"),
    "probdiff": ("END", "greater_than"),
}


def at_depth(heads: list[tuple[int, int]], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """GPT-2 medium's heads at the same relative depth of another shape (the same heads for GPT-2 medium)."""
    return [(min(n_layers - 1, round(layer * n_layers / 24)), head * n_heads // 16) for layer, head in heads]


def stage_receivers(stage: str, n_layers: int, n_heads: int) -> tuple[str | list, str]:
    """A stage's receivers on a model of this shape, and the name printed for them."""
    if stage in ("logits", "probdiff"):
        return "logits", "logits (END)" if stage == "logits" else "logits, prob. diff (GT)"
    if stage == "query":
        heads = at_depth(MOVER_QUERIES, n_layers, n_heads)
        return [(layer, head, "q") for layer, head in heads], "q of " + " ".join(f"{l}.{h}" for l, h in heads)
    heads = at_depth(INHIBITION_HEADS, n_layers, n_heads)
    receivers = [(layer, head, part) for layer, head in heads for part in "kv"]
    return receivers, "k,v of " + " ".join(f"{l}.{h}" for l, h in heads) + " @obj"


# The paper's workload, for the extrapolation: per model (name, n_layers, n_heads, d_model) and task, each stage
# after the logits with the heads that receive in it (the previous stage's), from the heads the paper names
# (circuit_reuse.paper: medium from the paper, small from Wang et al.). Each stage's senders are the sender
# set's for those receivers (the logits stage: every head); the discovered circuits may differ.
PAPER_N = 1000
KEY_VALUE_STAGES = ("induction", "previous_token")
SMALL = PAPER_HEADS["gpt2-small"]
MEDIUM_MOVERS = [*MEDIUM["movers"], *MEDIUM["negative_mover"]]
PAPER_WORKLOAD = {
    ("gpt2-small", 12, 12, 768): {
        "ioi": {"inhibition": SMALL["movers"], "induction": SMALL["inhibition"], "previous_token": SMALL["induction"]},
        "colored_objects": {"inhibition": SMALL["movers"], "induction": SMALL["inhibition"]},
    },
    ("gpt2-medium", 24, 16, 1024): {
        "ioi": {"inhibition": MEDIUM_MOVERS, "induction": MEDIUM["inhibition"], "previous_token": MEDIUM["induction"]},
        "colored_objects": {"inhibition": MEDIUM_MOVERS, "induction": MEDIUM["content_gatherers"]},
    },
}


def paper_sender_counts(sender_set: str) -> dict[tuple, dict[str, dict[str, int]]]:
    """Senders per stage of the paper's workload: every head to the logits (movers), the set's otherwise."""
    counts = {}
    for model, tasks in PAPER_WORKLOAD.items():
        _, n_layers, n_heads, _ = model
        counts[model] = {
            task: {"movers": n_layers * n_heads}
            | {
                stage: len(patching.sender_heads([(l, h, "q") for l, h in heads], n_layers, n_heads, sender_set))
                for stage, heads in stages.items()
            }
            for task, stages in tasks.items()
        }
    return counts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--architecture",
        default=DEFAULT_ARCHITECTURE,
        choices=sorted(architectures()),
        help="the released shape the random stand-in copies (default gpt2-medium, the paper's heads; another "
        "shape takes the heads at the same relative depth)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--n-prompts", type=int, default=32, help="Colored Objects prompts (default 32)")
    parser.add_argument("--reference-senders", type=int, default=4, help="senders the reference is timed on")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all)")
    parser.add_argument("--sender-chunk", type=int, default=None, help="senders per fast pass (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model-dir", default=None, help="where to cache the random model (default: a temp dir)")
    parser.add_argument("--tokenizer", default=None, help="GPT-2 tokenizer directory ($CIRCUIT_REUSE_TOKENIZER)")
    parser.add_argument("--seed", type=int, default=42, help="dataset seed (the paper's Colored Objects seed)")
    parser.add_argument(
        "--stages", default="logits,query,keyvalue,probdiff", help="comma-separated: logits, query, keyvalue, probdiff"
    )
    parser.add_argument(
        "--sender-set", default=patching.DEFAULT_SENDER_SET, choices=list(patching.SENDER_SETS), help="default authors"
    )
    parser.add_argument(
        "--method",
        default="exact",
        choices=list(METHODS),
        help="exact (default): the fast path against the reference; eap or eap_ig: that method against the fast path",
    )
    parser.add_argument("--ig-steps", type=int, default=DEFAULT_IG_STEPS, help="eap_ig's points (default 5)")
    return parser.parse_args(argv)


def check_shape_against_real_config(name: str) -> str:
    """The random stand-in's shape is the shipped architecture's; say whether a real GPT-2 config agrees."""
    record = architecture(name)
    configs = os.environ.get("CIRCUIT_REUSE_GPT2_CONFIGS")
    if not configs or not (Path(configs) / f"{name}.json").is_file():
        return f"shape as shipped ({record['source']})"
    real = json.loads((Path(configs) / f"{name}.json").read_text())
    mismatched = {key: (value, real.get(key)) for key, value in record["config"].items() if real.get(key) != value}
    if mismatched:
        raise SystemExit(f"the random {name} stand-in differs from the real config: {mismatched}")
    return f"shape matches {Path(configs) / (name + '.json')}"


def build_model(name: str, model_dir: Path, tokenizer_dir: Path, device: str):
    spec = ModelSpec(name=f"{name}-random", source="random", architecture=name, seed=0)
    cache_model(spec, model_dir, tokenizer_dir=tokenizer_dir)
    return load_model(model_dir, device=device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed_reference_senders(device: str, totals: dict):
    """Add the time the reference spends in its per-sender passes (steps a and b) to totals['senders'].

    The reference also runs a clean and a corrupted pass per batch; with few sampled senders those would
    weigh far more per sender than in a real run over every sender, so they are left out of its per-sender time.
    """
    originals = {name: getattr(patching, name) for name in ("_reference_sender_run", "_reference_receiver_run")}

    def wrap(function):
        def timed(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(device)
            totals["senders"] += time.perf_counter() - start
            return result

        return timed

    for name, function in originals.items():
        setattr(patching, name, wrap(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(patching, name, function)


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def sample_senders(senders: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """k senders spread evenly over the stage's senders (low to high layers), always the same ones."""
    if k >= len(senders):
        return list(senders)
    step = (len(senders) - 1) / max(k - 1, 1)
    return [senders[round(i * step)] for i in range(k)]


def stage_arguments(dataset, receivers, role: str, args) -> tuple[tuple, dict]:
    """The positional inputs and the keyword options every implementation takes for one stage."""
    position = None if receivers == "logits" else dataset.positions[role]
    inputs = (dataset.clean_tokens, dataset.corrupted_tokens, dataset.metric_tokens, receivers, position)
    common = {
        "batch_size": args.batch_size or len(dataset),
        "sender_set": args.sender_set,
        "end_positions": dataset.end,
        "progress": False,
        "metric": dataset.metric,
        "metric_weights": dataset.metric_weights,
    }
    return inputs, common


def run_stage(model, dataset, receivers, role: str, args) -> dict:
    cfg = model.cfg
    all_senders = patching.sender_heads(receivers, cfg.n_layers, cfg.n_heads, args.sender_set)
    sampled = sample_senders(all_senders, args.reference_senders)
    inputs, common = stage_arguments(dataset, receivers, role, args)

    reset_peak_memory(args.device)
    synchronize(args.device)
    start = time.perf_counter()
    fast = patching.path_patch(model, *inputs, sender_chunk=args.sender_chunk, **common)
    synchronize(args.device)
    fast_seconds = time.perf_counter() - start
    fast_memory = peak_memory_mib(args.device)

    reset_peak_memory(args.device)
    totals = {"senders": 0.0}
    start = time.perf_counter()
    with timed_reference_senders(args.device, totals):
        reference = patching.path_patch_reference(model, *inputs, senders=sampled, **common)
    synchronize(args.device)
    reference_seconds = time.perf_counter() - start
    reference_memory = peak_memory_mib(args.device)

    rows = torch.tensor([layer for layer, _ in sampled])
    cols = torch.tensor([head for _, head in sampled])
    difference = (fast[rows, cols] - reference[rows, cols]).abs().max().item()
    reference_per_sender = totals["senders"] / len(sampled)
    fast_per_sender = fast_seconds / len(all_senders)
    return {
        "senders": len(all_senders),
        "sampled": len(sampled),
        "reference_total": reference_seconds,
        "reference_per_sender": reference_per_sender,
        "fast_total": fast_seconds,
        "fast_per_sender": fast_per_sender,
        "ratio": reference_per_sender / fast_per_sender,
        "max_difference": difference,
        "max_score": reference[rows, cols].abs().max().item(),
        "fast_memory": fast_memory,
        "reference_memory": reference_memory,
    }


def run_approximation_stage(model, dataset, receivers, role: str, args) -> dict:
    """The fast exact path and one attribution method on every sender of a stage, on the same inputs."""
    cfg = model.cfg
    n_senders = len(patching.sender_heads(receivers, cfg.n_layers, cfg.n_heads, args.sender_set))
    inputs, common = stage_arguments(dataset, receivers, role, args)
    timed = {}
    for name, run in (
        ("fast", lambda: patching.path_patch(model, *inputs, sender_chunk=args.sender_chunk, **common)),
        (
            "approximate",
            lambda: attribution_patch(model, *inputs, method=args.method, ig_steps=args.ig_steps, **common),
        ),  # noqa: E501
    ):
        reset_peak_memory(args.device)
        synchronize(args.device)
        start = time.perf_counter()
        scores = run()
        synchronize(args.device)
        timed[name] = (scores, time.perf_counter() - start, peak_memory_mib(args.device))
    exact, approximate = timed["fast"][0], timed["approximate"][0]
    defined = ~exact.isnan()
    return {
        "senders": n_senders,
        "fast_total": timed["fast"][1],
        "approximate_total": timed["approximate"][1],
        "ratio": timed["fast"][1] / timed["approximate"][1],
        "max_difference": (approximate[defined] - exact[defined]).abs().max().item(),
        "max_score": exact[defined].abs().max().item(),
        "spearman": spearman(exact[defined].tolist(), approximate[defined].tolist())[0],
        "fast_memory": timed["fast"][2],
        "approximate_memory": timed["approximate"][2],
    }


def print_approximation_table(results: dict, names: dict[str, str], args, device) -> None:
    method = args.method if args.method == "eap" else f"eap_ig ({args.ig_steps} steps)"
    header = (
        f"{'stage':<30}{'senders':>8}{'fast s':>10}{method + ' s':>24}{'fast/approx':>13}"
        f"{'max |diff|':>12}{'max |score|':>12}{'Spearman':>10}{'fast MiB':>10}{'approx MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for stage, r in results.items():
        print(
            f"{names[stage]:<30}{r['senders']:>8}{r['fast_total']:>10.2f}{r['approximate_total']:>24.2f}"
            f"{r['ratio']:>12.2f}x{r['max_difference']:>12.2e}{r['max_score']:>12.3g}{r['spearman']:>10.3f}"
            f"{r['fast_memory']:>10.0f}{r['approximate_memory']:>12.0f}"
        )
    print()
    print(f"fast s, {method} s: each method's whole run over every sender of the stage (clean and corrupted runs")
    print("included); fast/approx > 1 where the approximation is faster. max |diff| and Spearman: the estimate")
    print(f"against the exact scores over the stage's senders. Peak memory as below ({device}).")


def extrapolate(per_sender_prompt: dict[str, float], sender_set: str, name: str) -> tuple[float, list[str]]:
    """Seconds for the paper's workload from the measured seconds per sender and prompt of each stage kind."""
    _, n_layers, _, d_model = next(key for key in PAPER_WORKLOAD if key[0] == name)
    total = 0.0
    counts = paper_sender_counts(sender_set)
    for (_, layers, _, width), tasks in counts.items():
        # Cost per sender and prompt scales with the model's per-token compute, layers x d_model^2.
        scale = (layers * width**2) / (n_layers * d_model**2)
        for stages in tasks.values():
            for stage, senders in stages.items():
                kind = "logits" if stage == "movers" else "query"
                if stage in KEY_VALUE_STAGES and "keyvalue" in per_sender_prompt:
                    kind = "keyvalue"
                total += per_sender_prompt[kind] * scale * senders * PAPER_N
    assumptions = [
        f"paper's workload: GPT-2 small and medium x IOI (4 stages) and Colored Objects (3 stages), N = {PAPER_N}",
        f"senders per stage: all heads to the logits; the {sender_set!r} set of the paper's receivers otherwise: "
        + "; ".join(
            f"{model} {task} " + " ".join(f"{stage} {n}" for stage, n in stages.items())
            for (model, *_), tasks in counts.items()
            for task, stages in tasks.items()
        ),
        "time linear in senders x prompts; the induction and previous-token (k/v) stages cost per sender what "
        "the measured key/value stage does (the query stage's where that was not measured)",
        "GPT-2 small scaled by its per-token compute (12 x 768^2) / (24 x 1024^2) = 0.28; prompts as long as "
        "Colored Objects' (IOI's are shorter, which helps the reference more than the fast path)",
    ]
    return total, assumptions


def set_threads_and_find_tokenizer(threads: int | None, tokenizer: str | None) -> Path:
    """Apply --threads and return the GPT-2 tokenizer directory (--tokenizer or $CIRCUIT_REUSE_TOKENIZER)."""
    if threads:
        torch.set_num_threads(threads)
    tokenizer_dir = resolve_tokenizer_dir(tokenizer)
    if tokenizer_dir is None:
        raise SystemExit("set CIRCUIT_REUSE_TOKENIZER (or --tokenizer) to the GPT-2 tokenizer directory")
    return tokenizer_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer_dir = set_threads_and_find_tokenizer(args.threads, args.tokenizer)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")

    shape_note = check_shape_against_real_config(args.architecture)
    with tempfile.TemporaryDirectory(prefix="benchmark-patching-") as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / "model"
        model = build_model(args.architecture, model_dir, tokenizer_dir, args.device)
        datasets = {
            task: make_dataset(task, args.n_prompts, seed=args.seed, tokenizer=tokenizer_dir)
            for task in dict.fromkeys(STAGES[stage][1] for stage in stages)
        }
        device = model_device(model)
        cfg = model.cfg
        groups = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        print(
            f"model: random {args.architecture} stand-in ({cfg.n_layers} layers x {cfg.n_heads} heads in {groups} "
            f"key/value groups, d_model {cfg.d_model}), {shape_note}"
        )
        print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
        for task, prompts in datasets.items():
            lengths = sorted({int(e) + 1 for e in prompts.end})
            print(
                f"prompts: {len(prompts)} {task} (seed {args.seed}), {lengths} tokens, metric {prompts.metric.name}; "
                f"batch size {args.batch_size or len(prompts)}; sender set {args.sender_set!r}"
            )
        with torch.no_grad():  # warm up kernels and allocator so neither implementation pays for them
            model(next(iter(datasets.values())).clean_tokens[:2].to(device))

        results, names = {}, {}
        for stage in stages:
            role, task = STAGES[stage]
            receivers, names[stage] = stage_receivers(stage, cfg.n_layers, cfg.n_heads)
            measure = run_stage if args.method == "exact" else run_approximation_stage
            results[stage] = measure(model, datasets[task], receivers, role, args)

    print()
    if args.method != "exact":
        print_approximation_table(results, names, args, device)
        return 0
    header = (
        f"{'stage':<30}{'senders':>8}{'ref s/sender':>14}{'fast s/sender':>15}{'ratio':>9}"
        f"{'max |diff|':>12}{'max |score|':>12}{'fast peak MiB':>15}{'ref peak MiB':>14}"
    )
    print(header)
    print("-" * len(header))
    for stage, r in results.items():
        print(
            f"{names[stage]:<30}{r['senders']:>8}{r['reference_per_sender']:>14.3f}{r['fast_per_sender']:>15.5f}"
            f"{r['ratio']:>8.0f}x{r['max_difference']:>12.2e}{r['max_score']:>12.3g}"
            f"{r['fast_memory']:>15.0f}{r['reference_memory']:>14.0f}"
        )
    print()
    print(
        "ref s/sender: the reference's two passes per sender, timed on "
        f"{args.reference_senders} senders spread over the layers (its clean and corrupted runs left out);"
    )
    print(
        "fast s/sender: the fast implementation's whole run on every sender (its clean and corrupted runs "
        "included) / senders."
    )
    memory_kind = (
        "torch.cuda.max_memory_allocated per run"
        if str(device).startswith("cuda")
        else ("process peak RSS so far (ru_maxrss)")
    )
    print(f"peak memory: {memory_kind}.")

    if {"logits", "query"} <= set(results) and any(key[0] == args.architecture for key in PAPER_WORKLOAD):
        per_sender_prompt = {
            implementation: {
                kind: results[kind][f"{implementation}_per_sender"] / len(datasets[STAGES[kind][1]]) for kind in results
            }
            for implementation in ("reference", "fast")
        }
        print()
        print(f"extrapolated full-paper workload on this device ({device}):")
        for implementation in ("reference", "fast"):
            seconds, assumptions = extrapolate(per_sender_prompt[implementation], args.sender_set, args.architecture)
            print(f"  {implementation:<10}{seconds:>14,.0f} s = {seconds / 3600:>9,.2f} h")
        print("  assumptions:")
        for line in assumptions:
            print(f"    - {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
