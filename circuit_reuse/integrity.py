"""The sha256 of every file a workflow job writes, checked by every job that reads it.

Each job records a digest beside each of its output files, `{file}.sha256`, in `sha256sum`'s format (so
`sha256sum -c results/datasets/ioi.jsonl.sha256` checks one by hand). Before a job reads its inputs it
checks each against its digest: a file edited by hand, truncated or damaged after its job wrote it stops
the job with the file named and the command that rebuilds it, instead of flowing silently into every
table and figure after it. Snakemake itself looks at modification times only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DIGEST_SUFFIX = ".sha256"
# Set by the Snakefile when the workflow is read (again in every job, which reads it too): how this run
# was started, so that an error can give the exact command that rebuilds a file.
RUN_ENV = "CIRCUIT_REUSE_RUN"


class IntegrityError(RuntimeError):
    """A file a job reads does not match the digest its own job recorded, or has none."""


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}{DIGEST_SUFFIX}")


def record_digests(paths: Iterable[str | os.PathLike]) -> None:
    """Write `{file}.sha256` beside each file (directories are skipped)."""
    for path in map(Path, paths):
        if path.is_file():
            digest_path(path).write_text(f"{sha256(path)}  {path.name}\n")


def verify_digests(paths: Iterable[str | os.PathLike], produced: Iterable[str | os.PathLike]) -> None:
    """Check each file under one of the `produced` directories (those the workflow's jobs write) against
    its recorded digest; raise IntegrityError naming the first that fails. Files elsewhere (the notebooks'
    sources, in the repository) are no job's output and have no digest."""
    roots = [Path(os.path.normpath(root)) for root in produced]
    for path in map(Path, paths):
        normal = Path(os.path.normpath(path))
        if not path.is_file() or not any(normal.is_relative_to(root) for root in roots):
            continue  # a directory, a file Snakemake reports missing itself, or a source file
        recorded = digest_path(path)
        if not recorded.is_file():
            raise IntegrityError(
                f"{path} has no recorded sha256 ({recorded} is missing), so it cannot be trusted: it was not "
                f"written by this workflow's job, or by an older version of it. Rebuild it with\n  "
                f"{rebuild_command(path)}"
            )
        expected = recorded.read_text().split()[0]
        if sha256(path) != expected:
            raise IntegrityError(
                f"{path} does not match the sha256 its job recorded in {recorded}: it was changed or damaged "
                f"after it was written. Rebuild it (and then what depends on it) with\n  {rebuild_command(path)}"
            )


def run_description(snakefile: str, directory: str, configfiles: Iterable[str], produced: Iterable[str]) -> str:
    """What the Snakefile puts in RUN_ENV: how the run was started and the directories its jobs write."""
    return json.dumps(
        {"snakefile": snakefile, "directory": directory, "configfiles": list(configfiles), "produced": list(produced)}
    )


def current_run() -> dict[str, Any]:
    return json.loads(os.environ.get(RUN_ENV, "{}"))


def rebuild_command(path: str | os.PathLike, run: Mapping[str, Any] | None = None) -> str:
    """The snakemake command that rebuilds `path` in this run (and, being newer, makes what reads it rerun)."""
    run = current_run() if run is None else run
    words = ["snakemake"]
    if run.get("snakefile"):
        words += ["--snakefile", run["snakefile"]]
    if run.get("directory"):
        words += ["--directory", run["directory"]]
    for configfile in run.get("configfiles", []):
        words += ["--configfile", configfile]
    words += ["--cores", "all", "--force", os.fspath(path)]
    command = shlex.join(words)
    return f"{command} && {shlex.join(words[:-2])}"
