"""Per-rule resources from the config's `resources` section, as the SLURM executor plugin reads them."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from circuit_reuse.config import ConfigError, load_config, validate_config
from circuit_reuse.models import resolve_device
from circuit_reuse.workflow import (
    JOB_CLASSES,
    ResourcesError,
    hub_offline,
    job_resources,
    job_threads,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def paper_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_every_job_class_has_defaults(paper_config):
    config = validate_config(paper_config)
    assert set(config["resources"]) == set(JOB_CLASSES)
    for spec in config["resources"].values():
        assert set(spec) == {"cpus", "mem_mb", "runtime", "gpu", "partition"}


def test_model_jobs_ask_for_a_gpu_and_light_jobs_do_not(paper_config):
    config = validate_config(paper_config)
    assert job_resources(config, "model") == {"mem_mb": 16000, "runtime": 240, "gpu": 1}
    assert job_resources(config, "light") == {"mem_mb": 4000, "runtime": 30}
    assert job_threads(config, "model") == 4 and job_threads(config, "light") == 1


def test_one_key_overrides_one_class_and_the_rest_keep_their_defaults(paper_config):
    paper_config["resources"] = {"model": {"gpu": 2, "partition": "gpu", "cpus": 8}}
    config = validate_config(paper_config)
    assert job_resources(config, "model") == {"mem_mb": 16000, "runtime": 240, "gpu": 2, "slurm_partition": "gpu"}
    assert job_threads(config, "model") == 8
    assert job_resources(config, "light") == {"mem_mb": 4000, "runtime": 30}


def test_smoke_config_runs_everything_on_one_cpu_without_a_gpu():
    config = load_config(REPO / "workflow" / "configs" / "smoke.yaml")
    for job_class in JOB_CLASSES:
        assert job_threads(config, job_class) == 1
        assert "gpu" not in job_resources(config, job_class)


def test_unknown_job_class_names_the_known_ones(paper_config):
    config = validate_config(paper_config)
    with pytest.raises(ResourcesError, match="unknown job class 'gpu'.*cache, light, model"):
        job_resources(config, "gpu")


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"modle": {}}, "resources: unknown key(s) 'modle'; allowed keys: cache, light, model"),
        ({"model": {"gpus": 1}}, "resources.model: unknown key(s) 'gpus'; allowed keys: cpus, gpu, mem_mb"),
        ({"model": {"gpu": -1}}, "resources.model.gpu: -1 is less than the minimum of 0"),
        ({"light": {"mem_mb": "4G"}}, "resources.light.mem_mb: '4G' is not of type 'integer'"),
        ({"light": {"runtime": 0}}, "resources.light.runtime: 0 is less than the minimum of 1"),
    ],
)
def test_bad_resources_are_reported_with_the_key(paper_config, resources, expected):
    paper_config["resources"] = resources
    with pytest.raises(ConfigError) as raised:
        validate_config(paper_config)
    assert expected in str(raised.value)


class _Resources(dict):
    """Snakemake's job.resources as the plugin uses it: attribute access and .get."""

    def __getattr__(self, name):
        return self[name]


def test_resources_become_the_sbatch_options_of_the_slurm_plugin(paper_config):
    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    paper_config["resources"] = {"model": {"partition": "gpu"}}
    config = validate_config(paper_config)
    job = SimpleNamespace(threads=job_threads(config, "model"), resources=_Resources(job_resources(config, "model")))
    partition = Executor.get_partition_arg(SimpleNamespace(_partitions=None, _fallback_partition=None), job)
    params = {
        "run_uuid": "run",
        "slurm_logfile": "log",
        "comment_str": "rule_check_model",
        "account": "",
        "partition": partition,
        "workdir": "/work",
    }
    call = get_submit_command(job, params) + set_gres_string(job)
    for option in ("-p gpu", "-t 240", "--mem 16000", "--cpus-per-task=4", "--gpus=1"):
        assert option in call, call


def test_hub_offline_sets_the_variables_and_tells_an_imported_hub_client(monkeypatch):
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, like the constant
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert huggingface_hub.constants.is_offline_mode()


@pytest.mark.parametrize(("has_gpu", "expected"), [(True, "cuda"), (False, "cpu")])
def test_auto_device_is_cuda_where_the_job_has_a_gpu_and_cpu_otherwise(monkeypatch, has_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert resolve_device("auto").type == expected


def _dry_run(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(tmp_path)]
        + ["--snakefile", str(REPO / "workflow" / "Snakefile"), "--configfile", str(REPO / "config.yaml"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _job_blocks(output):
    """rule name -> the dry run's description of its first job."""
    blocks = {}
    for block in re.split(r"\n(?=(?:local)?rule \S+:\n)", output):
        match = re.match(r"(?:local)?rule (\S+):\n", block)
        if match:
            blocks.setdefault(match.group(1), block.split("\n\n")[0])
    return blocks


def test_every_rule_declares_its_resources(tmp_path):
    # A rule without `resources: **job_resources(...)` would get whatever the cluster's defaults are.
    blocks = _job_blocks(_dry_run(tmp_path))
    assert "check_model" in blocks and "cache_model" in blocks
    undeclared = [rule for rule, block in blocks.items() if rule != "all" and "runtime=" not in block]
    assert not undeclared, f"rules without job_resources(...): {undeclared}"
    assert "mem_mb=16000" in blocks["check_model"] and "gpu=1" in blocks["check_model"]


def test_profile_set_resources_override_the_config(tmp_path):
    blocks = _job_blocks(
        _dry_run(
            tmp_path,
            "--profile",
            str(REPO / "workflow" / "profiles" / "slurm"),
            "--set-resources",
            "check_model:gpu=0",
            "check_model:slurm_partition=a100",
            "check_model:mem_mb=64000",
        )
    )
    assert "gpu=0" in blocks["check_model"]
    assert "slurm_partition=a100" in blocks["check_model"]
    assert "mem_mb=64000" in blocks["check_model"]


def test_shipped_profiles_parse():
    for profile in (REPO / "workflow" / "profiles").glob("*/config.yaml"):
        settings = yaml.safe_load(profile.read_text())
        assert isinstance(settings, dict), profile
    slurm = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm"
    # cpus_per_task here would override every rule's threads on SLURM
    assert "cpus_per_task" not in slurm.get("default-resources", {})
