"""Print how long each job of a finished run took, where the time went (start-up, model load, compute...)
and how much memory it used (from its benchmarks/).

python scripts/job_times.py smoke            # a run directory (default: the current one)
python scripts/job_times.py smoke --by-rule  # totals per rule
"""

import argparse

from circuit_reuse.workflow import job_times, rule_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", default=".", help="the workflow's working directory")
    parser.add_argument("--by-rule", action="store_true", help="sum the jobs of each rule")
    args = parser.parse_args()
    times = job_times(args.run_dir)
    total, startup = times["seconds"].sum(), times["startup"].sum()
    shown = rule_times(times) if args.by_rule else times.drop(columns=["process"])
    print(shown.to_string(index=False, float_format=lambda value: f"{value:.1f}"))
    print(f"\ntotal job time {total:.1f} s over {len(times)} jobs, of which start-up {startup:.1f} s")


if __name__ == "__main__":
    main()
