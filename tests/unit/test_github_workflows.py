"""CI and release workflows (issue 15): tests on push/PR with `make test`; on a v* tag the three
images of containers/ are built and pushed under the names and tag that nextflow.config uses."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def _config_images() -> dict[str, str]:
    config = (REPO / "nextflow.config").read_text()
    return {key: re.search(rf"{key}\s*=\s*'([^']+)'", config).group(1)
            for key in ("container_cpu", "container_gpu", "container_baselines")}


def _manifest_version() -> str:
    config = (REPO / "nextflow.config").read_text()
    return re.search(r"version\s*=\s*'([^']+)'", config.split("manifest {")[1]).group(1)


def test_ci_runs_make_test_on_push_and_pr():
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    steps = ci["jobs"]["test"]["steps"]
    uses = {s.get("uses", "").split("@")[0]: s for s in steps}
    assert "actions/checkout" in uses
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert str(uses["actions/setup-java"]["with"]["java-version"]) == "17"
    assert any(s.get("run", "").strip() == "make test" for s in steps)


def test_release_builds_the_images_nextflow_config_names():
    release = _load("release.yml")
    assert release["on"]["push"]["tags"] == ["v*"]
    job = release["jobs"]["images"]
    matrix = job["strategy"]["matrix"]["include"]
    prefix = release["env"]["IMAGE_PREFIX"]
    built = {f"{prefix}/{m['image']}": m["dockerfile"] for m in matrix}
    images = _config_images()
    version = _manifest_version()
    # every image nextflow.config names is built from its Dockerfile, tagged with the version
    assert {img.rsplit(":", 1)[0] for img in images.values()} == set(built)
    assert all(img.rsplit(":", 1)[1] == version for img in images.values())
    dockerfiles = {p.relative_to(REPO).as_posix() for p in (REPO / "containers").glob("Dockerfile*")}
    assert set(built.values()) == dockerfiles
    assert built[images["container_cpu"].rsplit(":", 1)[0]] == "containers/Dockerfile"
    assert built[images["container_gpu"].rsplit(":", 1)[0]] == "containers/Dockerfile.cuda"
    assert built[images["container_baselines"].rsplit(":", 1)[0]] == "containers/Dockerfile.baselines"
    steps = job["steps"]
    push = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ env.IMAGE_PREFIX }}/${{ matrix.image }}:${{ steps.version.outputs.version }}"
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"]["registry"] == "${{ env.REGISTRY }}"
    assert release["env"]["REGISTRY"] == prefix.split("/")[0] == "ghcr.io"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert release["permissions"]["packages"] == "write"


def test_release_reads_the_manifest_version_like_nextflow_config_sets_it():
    """The workflow's sed finds manifest.version (the first `version = 'x.y.z'` line)."""
    import subprocess

    run = next(s for s in _load("release.yml")["jobs"]["images"]["steps"] if s.get("id") == "version")["run"]
    command = re.search(r"\$\((sed .*?nextflow.config \| head -n1)\)", run).group(1)
    found = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert found == _manifest_version()
