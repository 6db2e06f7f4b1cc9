"""The ./nextflow launcher's progress choice: live view in a terminal, plain lines otherwise.

Runs the real launcher with a fake `java` first on PATH (it prints the NXF_ANSI_LOG it was
given) and a fake pinned jar, so no Nextflow is started.
"""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_java(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text('#!/bin/sh\necho "NXF_ANSI_LOG=${NXF_ANSI_LOG-unset}"\necho "NXF_OFFLINE=${NXF_OFFLINE-unset}" >&2\n')
    java.chmod(0o755)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "nextflow-25.04.4-one.jar").write_text("not a jar")
    env = {k: v for k, v in os.environ.items() if k not in ("NXF_ANSI_LOG", "NXF_OFFLINE")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", COEM_USE_LOCAL_NEXTFLOW="1",
               COEM_NEXTFLOW_DIST=str(dist), NXF_HOME=str(tmp_path / "home"))
    return env


def _run_with_pipe(env: dict) -> str:
    return subprocess.run([str(REPO / "nextflow"), "-version"], env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def _run_in_terminal(env: dict) -> str:
    """stdout is a pseudo-terminal, as when a person runs the launcher."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([str(REPO / "nextflow"), "-version"], env=env, stdout=follower,
                              stderr=subprocess.PIPE, timeout=60, check=True)
        assert proc.returncode == 0
        return os.read(leader, 4096).decode().strip()
    finally:
        os.close(leader)
        os.close(follower)


def test_not_a_terminal_gets_plain_log_lines(fake_java):
    assert _run_with_pipe(fake_java) == "NXF_ANSI_LOG=false"


def test_terminal_leaves_the_live_view_to_nextflow(fake_java):
    assert _run_in_terminal(fake_java) == "NXF_ANSI_LOG=unset"


@pytest.mark.parametrize("value", ["true", "false"])
def test_users_setting_wins(fake_java, value):
    env = {**fake_java, "NXF_ANSI_LOG": value}
    assert _run_with_pipe(env) == f"NXF_ANSI_LOG={value}"
    assert _run_in_terminal(env) == f"NXF_ANSI_LOG={value}"


def _offline_seen(env: dict, *args: str) -> tuple[str, str]:
    proc = subprocess.run([str(REPO / "nextflow"), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    lines = proc.stderr.strip().splitlines()
    return lines[-1], proc.stderr


def test_online_unless_asked(fake_java):
    """Issue 15: the launcher leaves online mode alone, so that cloud plugins can be fetched."""
    assert _offline_seen(fake_java, "-version")[0] == "NXF_OFFLINE=unset"


@pytest.mark.parametrize("value", ["true", "false"])
def test_offline_when_asked(fake_java, value):
    assert _offline_seen({**fake_java, "NXF_OFFLINE": value}, "-version")[0] == f"NXF_OFFLINE={value}"


def test_offline_cloud_profile_without_its_plugin_is_explained(fake_java):
    _, stderr = _offline_seen({**fake_java, "NXF_OFFLINE": "true"}, "run", ".", "-profile", "awsbatch,gpu")
    assert "nf-amazon plugin" in stderr and "unset NXF_OFFLINE" in stderr
    _, stderr = _offline_seen(fake_java, "run", ".", "-profile", "awsbatch")
    assert "NOTE" not in stderr  # online: Nextflow fetches it
    _, stderr = _offline_seen({**fake_java, "NXF_OFFLINE": "true"}, "run", ".", "-profile", "test,googlebatch")
    assert "nf-google plugin" in stderr
    _, stderr = _offline_seen({**fake_java, "NXF_OFFLINE": "true"}, "lint", "conf/awsbatch.config")
    assert "NOTE" not in stderr  # not a profile
