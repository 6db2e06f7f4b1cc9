"""What the benchmark scripts that run a step in a child process share: the child's usage
report, and the JSON results with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec (Linux's ru_maxrss
    keeps the parent's high-water mark from before the exec, so a child would report at least the
    parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def print_usage() -> None:
    """The child's CPU seconds and peak RSS as one JSON line, the last it prints."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": peak_rss_mb()}))


def write_results(name: str, rows: list[dict]) -> Path:
    """``benchmarks/out/<name>``: the rows and the machine (platform, CPUs, load at the end)."""
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_at_end": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))
    print(f"\nwrote {path}")
    return path


def run_in_child(script: str, step_args: list[str], work: Path) -> tuple[float, dict]:
    """``script --child STEP_ARGS`` as a fresh process in ``work``: (wall seconds, its usage)."""
    import subprocess
    import sys
    import time

    wall = time.perf_counter()
    child = subprocess.run([sys.executable, script, "--child", json.dumps(step_args), "--data-dir", str(work)],
                           check=True, cwd=work, stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - wall, json.loads(child.stdout.strip().splitlines()[-1])


def child_step(step_main, step_args: list[str]) -> None:
    """In the child: run the step, stop on failure, then print the usage (``print_usage``)."""
    if step_main(step_args) not in (0, None):
        raise SystemExit("the step failed")
    print_usage()


def remove_dir(work: Path) -> None:
    """A run's work folder (flat) and what it holds."""
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
