"""Time the paper's whole intervention with the hooked engine and the END-only engine on the same inputs.

A seeded random model with GPT-2 medium's shape (the stand-in `benchmark_patching.py` uses, checked against
the real gpt2-medium config when $CIRCUIT_REUSE_GPT2_CONFIGS is set) runs N Colored Objects prompts (the
library's generator with the real tokenizer) through `intervention_experiment` with config.yaml's
intervention settings and the paper's heads: the three overrides (inhibition, negative mover, both), the
content gatherers' block, their random-head controls, and the mover readouts (the paper's movers 15.14,
16.15, 17.4, 18.5, 19.15, 19.1). It runs the experiment once with each engine (`circuit_reuse.evaluation.
choose_engine`), fast first, and prints: seconds, their ratio, the largest difference between the two
runs' tables (and whether every non-numeric column agrees), peak memory, and the time the paper's run
(N = 1000) would take with each.

    python scripts/benchmark_intervention.py --threads 2             # CPU, N = 25
    python scripts/benchmark_intervention.py --device cuda --n-prompts 200

Needs the GPT-2 tokenizer: $CIRCUIT_REUSE_TOKENIZER (or --tokenizer).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from benchmark_patching import (
    ARCHITECTURE,
    MEDIUM_MOVERS,
    build_model,
    check_shape_against_real_config,
    peak_memory_mib,
    reset_peak_memory,
    set_threads_and_find_tokenizer,
    synchronize,
)

from circuit_reuse.datasets import make_dataset
from circuit_reuse.edits import BASELINE
from circuit_reuse.intervention import HeadSet, InterventionSettings, intervention_experiment, plan_conditions
from circuit_reuse.paper import PAPER_HEADS

REPO = Path(__file__).resolve().parent.parent
PAPER_N = 1000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--n-prompts", type=int, default=25, help="Colored Objects prompts (default 25)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model-dir", default=None, help="where to cache the random model (default: a temp dir)")
    parser.add_argument("--tokenizer", default=None, help="GPT-2 tokenizer directory ($CIRCUIT_REUSE_TOKENIZER)")
    parser.add_argument("--seed", type=int, default=42, help="dataset seed (the paper's Colored Objects seed)")
    parser.add_argument("--config", default=str(REPO / "config.yaml"), help="its intervention section is used")
    return parser.parse_args(argv)


def paper_head_sets() -> dict[str, HeadSet]:
    medium = PAPER_HEADS[ARCHITECTURE]
    edited = ("inhibition", "negative_mover", "content_gatherers")
    sets = {name: HeadSet(name, list(medium[name]), "paper") for name in edited}
    sets["movers"] = HeadSet("movers", sorted(MEDIUM_MOVERS), "paper")  # the negative mover read out too
    return sets


def timed_run(model, dataset, sets, settings, engine: str, device: str) -> tuple[dict, float, float]:
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    tables = intervention_experiment(model, dataset, sets, settings, progress=False, engine=engine)
    synchronize(device)
    return tables, time.perf_counter() - start, peak_memory_mib(device)


def compare(fast: dict[str, pd.DataFrame], hooks: dict[str, pd.DataFrame]) -> tuple[float, list[str]]:
    """The largest absolute difference over every numeric column of every table, and the tables whose other
    columns differ."""
    largest, differing = 0.0, []
    for name, table in hooks.items():
        other = fast[name]
        if list(other.columns) != list(table.columns) or len(other) != len(table):
            differing.append(name)
            continue
        for column in table.columns:
            a, b = table[column].reset_index(drop=True), other[column].reset_index(drop=True)
            if pd.api.types.is_float_dtype(a):
                both = a.notna() & b.notna()
                if not a.isna().equals(b.isna()):
                    differing.append(f"{name}.{column} (NaN)")
                if both.any():
                    largest = max(largest, float(np.abs(a[both].to_numpy() - b[both].to_numpy()).max()))
            elif not a.equals(b):
                differing.append(f"{name}.{column}")
    return largest, differing


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer_dir = set_threads_and_find_tokenizer(args.threads, args.tokenizer)
    section = yaml.safe_load(Path(args.config).read_text())["intervention"]
    settings = InterventionSettings.from_config(section)
    if args.batch_size:
        settings.batch_size = args.batch_size
    sets = paper_head_sets()
    plans = plan_conditions(sets, settings)
    n_conditions = len(plans) + settings.repeats * sum(1 for p in plans if p.name != BASELINE)

    shape_note = check_shape_against_real_config()
    with tempfile.TemporaryDirectory(prefix="benchmark-intervention-") as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / "model"
        model = build_model(model_dir, tokenizer_dir, args.device)
        dataset = make_dataset("colored_objects", args.n_prompts, seed=args.seed, tokenizer=tokenizer_dir)
        cfg = model.cfg
        print(
            f"model: random {ARCHITECTURE} stand-in ({cfg.n_layers} layers x {cfg.n_heads} heads, "
            f"d_model {cfg.d_model}), {shape_note}"
        )
        print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
        lengths = sorted({int(e) + 1 for e in dataset.end})
        print(
            f"prompts: {len(dataset)} colored_objects (seed {args.seed}), {lengths} tokens; batch size "
            f"{settings.batch_size}; {n_conditions} conditions ({len(plans)} planned + {settings.repeats} random "
            f"controls each but the baseline); bootstrap n {settings.n_boot}"
        )
        for plan in plans:
            print(f"  {plan.name:<26} {plan.kind:<9} {', '.join(f'{l}.{h}' for l, h in plan.condition.heads)}")
        print(f"  readout (movers): {', '.join(f'{l}.{h}' for l, h in sets['movers'].heads)}")
        with torch.no_grad():  # warm up kernels and allocator so neither engine pays for them
            model(dataset.clean_tokens[:2].to(args.device))

        fast, fast_seconds, fast_memory = timed_run(model, dataset, sets, settings, "fast", args.device)
        hooks, hooks_seconds, hooks_memory = timed_run(model, dataset, sets, settings, "hooks", args.device)

    difference, differing = compare(fast, hooks)
    print()
    header = (
        f"{'engine':<8}{'seconds':>10}{'s / condition pass / 25 prompts':>34}{'peak MiB':>10}"
        f"{'paper run (N = 1000)':>24}"
    )
    print(header)
    print("-" * len(header))
    for engine, seconds, memory in (("hooks", hooks_seconds, hooks_memory), ("fast", fast_seconds, fast_memory)):
        per_pass = seconds / n_conditions / len(dataset) * 25
        paper = seconds * PAPER_N / len(dataset)
        print(f"{engine:<8}{seconds:>10.1f}{per_pass:>34.3f}{memory:>10.0f}{paper / 3600:>21.2f} h")
    print()
    print(f"ratio hooks / fast: {hooks_seconds / fast_seconds:.1f}x")
    print(f"largest difference over the tables' numeric columns: {difference:.2e}")
    print(
        "every other column (predictions, correct, changes, heads, statuses) identical"
        if not differing
        else f"columns that differ: {', '.join(differing)}"
    )
    memory_kind = "torch.cuda.max_memory_allocated per run" if args.device.startswith("cuda") else "process peak RSS"
    print(f"peak memory: {memory_kind} (the fast engine ran first).")
    print(
        f"paper run: the whole experiment (bootstrap included) scaled linearly from N = {len(dataset)} to "
        f"{PAPER_N} prompts."
    )
    return 0 if not differing else 1


if __name__ == "__main__":
    sys.exit(main())
