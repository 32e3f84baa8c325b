"""Run the workflow once per dataset-seed replicate and report how the headline numbers vary across seeds.

    python scripts/run_replicates.py --configfile workflow/configs/scale.yaml --out runs/scale -- --cores all

Each replicate runs in OUT/seed-offset-K/ with every task's seed plus K (offsets from the config's
`replicates.seed_offsets`, or --offsets) and all replicates share one model cache (OUT/models/, or the
config's model_cache when it is an absolute path). Arguments after `--` go to every snakemake call, e.g.
`--profile workflow/profiles/slurm` or a target file. A finished replicate is not rerun: snakemake finds
nothing to do. The comparison is written to OUT/seed_variation.{parquet,csv}.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from circuit_reuse.config import ConfigError, load_config
from circuit_reuse.io import write_parquet
from circuit_reuse.replicates import replicate_config, replicate_dir, seed_variation

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", required=True, type=Path, help="the workflow config to replicate")
    parser.add_argument("--out", required=True, type=Path, help="directory of the replicates and the comparison")
    parser.add_argument("--offsets", type=int, nargs="+", help="seed offsets (default: replicates.seed_offsets)")
    return parser.parse_args(argv), extra or ["--cores", "all"]


def main(argv: list[str]) -> int:
    args, snakemake_args = parse_args(argv)
    try:
        config = load_config(args.configfile)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    offsets = args.offsets or config["replicates"]["seed_offsets"]
    if len(set(offsets)) != len(offsets) or min(offsets) < 0:
        print(f"--offsets must be distinct and >= 0; got {offsets}", file=sys.stderr)
        return 2
    cache = Path(config["model_cache"])
    cache = cache if cache.is_absolute() else args.out / "models"
    runs = {}
    for number, offset in enumerate(offsets, start=1):
        run_dir = replicate_dir(args.out, offset)
        run_dir.mkdir(parents=True, exist_ok=True)
        run_config = run_dir / "config.yaml"
        run_config.write_text(yaml.safe_dump(replicate_config(config, offset, cache), sort_keys=False))
        seeds = ", ".join(f"{task} {options['seed'] + offset}" for task, options in config["tasks"].items())
        print(f"[replicate {number}/{len(offsets)}] seed offset {offset} ({seeds}) in {run_dir}", flush=True)
        command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile")]
        command += ["--configfile", str(run_config), "--directory", str(run_dir), *snakemake_args]
        if subprocess.run(command).returncode != 0:
            print(f"replicate with seed offset {offset} failed; its logs are under {run_dir}/logs", file=sys.stderr)
            return 1
        runs[offset] = run_dir / "results"
    table = seed_variation(runs)
    write_parquet(
        args.out / "seed_variation.parquet", table, config={"configfile": str(args.configfile), "offsets": offsets}
    )
    table.to_csv(args.out / "seed_variation.csv", index=False)
    with_spread = table[["model", "family", "metric", "n", "mean", "std", "min", "max"]]
    print(with_spread.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"written: {args.out / 'seed_variation.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
