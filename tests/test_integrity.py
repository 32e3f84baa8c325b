"""Recorded sha256 digests of job outputs, and their check before a job reads them."""

import hashlib
import subprocess

import pytest

from circuit_reuse.integrity import IntegrityError, rebuild_command, record_digests, verify_digests

RUN = {"snakefile": "/repo/workflow/Snakefile", "directory": "/runs/a b", "configfiles": ["/repo/smoke.yaml"]}


@pytest.fixture
def produced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    table = tmp_path / "results" / "table.csv"
    table.write_text("a,b\n1,2\n")
    record_digests(["results/table.csv", "results"])  # a directory is skipped
    return table


def test_a_digest_is_sha256sum_compatible(produced):
    line = (produced.parent / "table.csv.sha256").read_text()
    assert line == f"{hashlib.sha256(produced.read_bytes()).hexdigest()}  table.csv\n"
    assert subprocess.run(["sha256sum", "-c", "table.csv.sha256"], cwd=produced.parent).returncode == 0


def test_an_unchanged_file_passes(produced):
    verify_digests(["results/table.csv"], produced=["results"])


def test_a_changed_file_is_named(produced):
    produced.write_text("a,b\n1,3\n")
    with pytest.raises(IntegrityError, match=r"results/table.csv does not match the sha256 its job recorded"):
        verify_digests(["results/table.csv"], produced=["results"])


def test_a_file_without_digest_is_not_trusted(produced):
    (produced.parent / "other.csv").write_text("x\n")
    with pytest.raises(IntegrityError, match=r"results/other.csv has no recorded sha256"):
        verify_digests(["results/other.csv"], produced=["./results/"])


def test_files_no_job_writes_are_not_checked(produced, tmp_path):
    (tmp_path / "notebook.ipynb").write_text("{}")
    verify_digests([str(tmp_path / "notebook.ipynb"), "notebook.ipynb", "results/missing.csv"], produced=["results"])


def test_the_rebuild_command_forces_the_file_then_runs_the_rest():
    assert rebuild_command("results/x.parquet", RUN) == (
        "snakemake --snakefile /repo/workflow/Snakefile --directory '/runs/a b' --configfile /repo/smoke.yaml "
        "--cores all --force results/x.parquet && snakemake --snakefile /repo/workflow/Snakefile "
        "--directory '/runs/a b' --configfile /repo/smoke.yaml --cores all"
    )
