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
    java.write_text('#!/bin/sh\necho "NXF_ANSI_LOG=${NXF_ANSI_LOG-unset}"\n')
    java.chmod(0o755)
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "nextflow-25.04.4-one.jar").write_text("not a jar")
    env = {k: v for k, v in os.environ.items() if k != "NXF_ANSI_LOG"}
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
