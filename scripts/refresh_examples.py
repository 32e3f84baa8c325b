"""Regenerate the README's figures and the notebooks' example tables from a fresh run of a config.

    python scripts/refresh_examples.py                                   # the smoke config
    python scripts/refresh_examples.py --configfile my.yaml --model m    # any other config
    python scripts/refresh_examples.py --configfile workflow/configs/organisms.yaml --figures-only

runs the workflow on the config in a directory of its own (runs/examples/{config name}/ by default; a rerun
there rebuilds only what changed), then replaces notebooks/example_data/ with the run's example tables
and figures/{config name}/ with the figures the README shows, drawn for one model (by default the
config's last) and its first task. --figures-only leaves notebooks/example_data/ alone (the notebooks'
examples are the smoke run's; the end-to-end test compares them with its own). Arguments after `--` go to
snakemake (default: --cores all).
"""

import argparse
import subprocess
import sys
from pathlib import Path

from circuit_reuse.config import load_config
from circuit_reuse.examples import copy_examples, copy_readme_figures

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "workflow" / "configs" / "smoke.yaml")
    parser.add_argument("--run-dir", type=Path, help="where the run goes (default runs/examples/{config name})")
    parser.add_argument("--model", help="the model whose figures the README shows (default: the config's last)")
    parser.add_argument("--figures-only", action="store_true", help="replace the figures, not the example tables")
    parser.add_argument("snakemake_args", nargs="*", help="after --: arguments for snakemake")
    args = parser.parse_args()
    config = load_config(args.configfile)
    stem = args.configfile.stem
    run_dir = (args.run_dir or REPO / "runs" / "examples" / stem).resolve()
    model = args.model or list(config["models"])[-1]
    task = list(config["tasks"])[0]
    command = [
        sys.executable, "-m", "snakemake", *(args.snakemake_args or ["--cores", "all"]),
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--configfile", str(args.configfile.resolve()), "--directory", str(run_dir),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"the run in {run_dir} failed; nothing was replaced")
    if not args.figures_only:
        tables = copy_examples(run_dir / "results", REPO / "notebooks" / "example_data")
        print(f"notebooks/example_data/: {len(tables)} tables from {run_dir / 'results'}")
    figures = copy_readme_figures(run_dir / "figures", REPO / "figures" / stem, model, task)
    print(f"figures/{stem}/: {', '.join(figures)}")


if __name__ == "__main__":
    main()
