"""`make install` installs only what the pipeline runs: the steps work without the test and
baseline extras, and --run_baselines without them fails with one line saying what to install."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTRAS_ONLY = ("seacells", "palantir", "scanpy", "ipywidgets", "pytest", "hadolint")

# Makes the extras unimportable, as in a `pip install .` environment, then imports every step.
_BLOCK_EXTRAS = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0].lower() in {'seacells', 'palantir', 'scanpy', 'ipywidgets'}:
            raise ImportError(f'blocked: {name}')
        return None
sys.meta_path.insert(0, Block())
for step in STEPS:
    importlib.import_module(f'coem.cli.{step}')
print('imported', len(STEPS))
"""


def test_runtime_dependencies_leave_out_the_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert not [name for name in EXTRAS_ONLY if name in runtime]
    assert {"test", "seacells"} <= set(project["optional-dependencies"])


def test_make_install_is_runtime_only_and_make_test_adds_the_extras():
    makefile = (REPO / "Makefile").read_text()
    venv_rule = re.search(r"^\$\(VENV_STAMP\):.*?(?=^\S)", makefile, re.S | re.M).group(0)
    assert 'pip install --quiet -e .\n' in venv_rule and "[test" not in venv_rule
    assert re.search(r'^\$\(TEST_STAMP\):.*\n.*pip install --quiet -e "\.\[test,seacells\]"', makefile, re.M)
    assert re.search(r"^demo: install$", makefile, re.M)
    assert re.search(r"^test: install-test$", makefile, re.M)


def test_every_pipeline_step_imports_without_the_extras():
    steps = sorted(p.stem for p in (REPO / "coem" / "cli").glob("*.py") if not p.stem.startswith("_"))
    code = f"STEPS = {steps!r}\n" + _BLOCK_EXTRAS
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"imported {len(steps)}"


def test_baselines_without_seacells_fail_with_one_line_naming_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['SEACells'] = None\n"  # `import SEACells` now raises ImportError
        "from coem.cli._common import run_cli\n"
        "from coem.cli.baselines import main\n"
        f"sys.exit(run_cli(main, ['--sample', 'S1', '--input', {str(tmp_path / 'S1.metacells.h5mu')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1
    assert "SEACells is not installed" in errors[0] and "pip install '.[seacells]'" in errors[0]
    assert "Traceback" not in proc.stderr
