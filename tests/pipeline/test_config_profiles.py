"""`nextflow config -profile <p>` parses for every profile and sets what the profile promises."""

from __future__ import annotations

import re

import pytest

from .conftest import REPO, run_nextflow

pytestmark = pytest.mark.pipeline


def _config(tmp_path, profile: str | None, **params: str) -> str:
    """The flat config for a profile; `params` are set through an extra config file (-c)."""
    extra = tmp_path / "params.config"
    extra.write_text("params {\n" + "".join(f"    {k} = '{v}'\n" for k, v in params.items()) + "}\n")
    profile_args = ["-profile", profile] if profile else []  # no profile: what a newcomer runs
    result = run_nextflow(["-c", str(extra), "config", str(REPO), *profile_args, "-flat"], tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    return result.output


def test_test_profile_caps_resources(tmp_path):
    out = _config(tmp_path, "test")
    assert "params.input = " in out and "samplesheet_test.csv" in out
    assert "params.max_cpus = 2" in out
    assert "process.resourceLimits = [cpus:2, memory:'6 GB', time:'1h']" in out


def _machine_memory_mb() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


def test_no_profile_caps_resources_at_this_machine(tmp_path):
    import os

    out = _config(tmp_path, None)  # no profile: the local executor
    assert f"params.max_cpus = {os.cpu_count()}" in out
    memory_mb = int(out.split("params.max_memory = '")[1].split(".MB'")[0])
    assert abs(memory_mb - _machine_memory_mb()) <= 0.02 * _machine_memory_mb()
    assert f"process.resourceLimits = [cpus:{os.cpu_count()}, memory:" in out


def test_docker_and_gpu_profiles_cap_at_this_machine_too(tmp_path):
    import os

    assert f"params.max_cpus = {os.cpu_count()}" in _config(tmp_path, "docker,gpu")


def test_cloud_profiles_keep_the_cluster_caps(tmp_path):
    out = _config(tmp_path, "googlebatch", gcp_project="my-project")
    assert "params.max_cpus = 16" in out and "params.max_memory = '128.GB'" in out
    assert "process.resourceLimits = [cpus:16, memory:'128 GB'" in out


def test_docker_profile(tmp_path):
    out = _config(tmp_path, "docker")
    assert "docker.enabled = true" in out
    assert "singularity.enabled = false" in out


@pytest.mark.parametrize("engine", ["singularity", "apptainer"])
def test_singularity_like_profiles(tmp_path, engine):
    out = _config(tmp_path, engine)
    assert f"{engine}.enabled = true" in out
    assert f"{engine}.autoMounts = true" in out
    assert "docker.enabled = false" in out


def test_gpu_profile_only_on_gpu_label(tmp_path):
    out = _config(tmp_path, "gpu,docker")
    assert "params.use_gpu = true" in out
    assert "process.'withLabel:process_gpu'.accelerator = 1" in out
    assert "process.'withLabel:process_gpu'.containerOptions" in out
    assert "process.accelerator" not in out  # no GPU for the other steps


def test_awsbatch_profile(tmp_path):
    out = _config(tmp_path, "awsbatch,gpu", awsqueue="cpuq", awsqueue_gpu="gpuq")
    assert "process.executor = 'awsbatch'" in out
    assert "aws.region = 'eu-west-1'" in out
    assert "process.'withLabel:process_gpu'.queue" in out


def test_googlebatch_profile(tmp_path):
    out = _config(tmp_path, "googlebatch,gpu", gcp_project="my-project")
    assert "process.executor = 'google-batch'" in out
    # `nextflow config` takes no --params; a -c file is read after the profiles, so the value set
    # there cannot reach google.project (on `nextflow run --gcp_project x` it does): check the wiring.
    assert "google.project = " in out
    assert "project  = params.gcp_project" in (REPO / "conf" / "googlebatch.config").read_text()
    assert "google.batch.spot = true" in out
    assert "google.batch.installGpuDrivers = true" in out
    assert "process.'withLabel:process_gpu'.accelerator" in out


def test_base_config_retries_with_more_resources(tmp_path):
    out = _config(tmp_path, "test")
    assert "process.maxRetries = 2" in out
    assert "process.resourceLimits" in out


@pytest.mark.parametrize("profile", ["conda", "mamba"])
def test_conda_profiles(tmp_path, profile):
    out = _config(tmp_path, profile)
    assert "conda.enabled = true" in out
    assert ("conda.useMamba = true" in out) == (profile == "mamba")
    assert "docker.enabled = false" in out
    assert f"process.conda = '{REPO}/containers/environment.yml'" in out
    assert "environment.baselines.yml" in out


def test_wave_profile(tmp_path):
    out = _config(tmp_path, "wave")
    assert "wave.enabled = true" in out
    assert "wave.strategy = ['container', 'conda']" in out


def test_every_process_gets_the_package_digest(tmp_path):
    out = _config(tmp_path, "test")
    assert re.search(r"process\.'withName:\.\*'\.ext\.coem_digest = '[0-9a-f]{16}'", out)
