"""nf-core module hygiene (issue 15): no params in modules, a when: clause, a meta.yml that matches
the process, and the exports every task needs (failure isolation, package version and digest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))
# Samplesheet errors fail the whole run, and the report and the verdict cover all samples.
NOT_PER_SAMPLE = {"samplesheet_check", "multiqc", "run_status"}
ids = [m.parent.name for m in MODULES]


def _block(text: str, name: str) -> str:
    """The lines of a process section (input:, output:, script:, ...) up to the next section."""
    match = re.search(rf"^\s+{name}:\s*\n(.*?)(?=^\s+(?:input|output|when|script|stub|exec):\s*$|\Z)", text, re.M | re.S)
    assert match, f"no {name}: block"
    return match.group(1)


def _input_names(text: str) -> list[str]:
    names = []
    for line in _block(text, "input").splitlines():
        line = line.split("//")[0]
        names += re.findall(r"(?:val|path)\s*\(\s*(\w+)", line)
        names += re.findall(r"^\s*(?:val|path)\s+(\w+)", line)
    return names


def _output_emits(text: str) -> list[str]:
    return re.findall(r"emit:\s*(\w+)", _block(text, "output"))


def test_there_are_modules():
    assert len(MODULES) >= 10


@pytest.mark.parametrize("module", MODULES, ids=ids)
def test_no_params_in_modules(module):
    code = "\n".join(line.split("//")[0] for line in module.read_text().splitlines())
    assert "params." not in code, f"{module}: pass parameters through task.ext (conf/modules.config)"


@pytest.mark.parametrize("module", MODULES, ids=ids)
def test_when_clause(module):
    assert "task.ext.when == null || task.ext.when" in _block(module.read_text(), "when")


@pytest.mark.parametrize("module", MODULES, ids=ids)
def test_meta_yml_matches_the_process(module):
    meta_path = module.parent / "meta.yml"
    assert meta_path.is_file(), f"{module.parent.name} has no meta.yml"
    meta = yaml.safe_load(meta_path.read_text())
    for key in ("name", "description", "keywords", "tools", "input", "output", "authors"):
        assert meta.get(key), f"{meta_path}: missing {key}"
    assert meta["name"] == module.parent.name
    text = module.read_text()
    assert [next(iter(d)) for d in meta["input"]] == _input_names(text)
    outputs = {next(iter(d)): next(iter(d.values())) for d in meta["output"]}
    assert list(outputs) == _output_emits(text)
    for name, spec in outputs.items():
        assert spec.get("pattern") and spec.get("description"), f"{meta_path}: output {name} needs a pattern and a description"


@pytest.mark.parametrize("module", MODULES, ids=ids)
def test_every_task_exports_pipeline_version_and_package_digest(module):
    script = _block(module.read_text(), "script")
    if module.parent.name != "run_status":  # a bash-only step: runs no coem code
        assert "export COEM_PIPELINE_VERSION=${workflow.manifest.version}" in script
        assert "export COEM_PACKAGE_DIGEST=${task.ext.coem_digest" in script


@pytest.mark.parametrize("module", [m for m in MODULES if m.parent.name not in NOT_PER_SAMPLE],
                         ids=[i for i in ids if i not in NOT_PER_SAMPLE])
def test_per_sample_modules_isolate_failures(module):
    text = module.read_text()
    script = _block(text, "script")
    assert "export COEM_FAILURE_FILE=coem_failed.txt" in script
    assert "export COEM_WARNINGS_FILE=coem_warnings.txt" in script
    output = _block(text, "output")
    assert re.search(r'tuple val\(meta\), path\("coem_failed.txt"\)\s*, optional: true, emit: failed', output)
    assert re.search(r'tuple val\(meta\), path\("coem_warnings.txt"\)\s*, optional: true, emit: warnings', output)
    for line in output.strip().splitlines():  # a failed sample emits nothing downstream
        assert "optional: true" in line, f"{module}: output not optional: {line.strip()}"


def test_modules_config_gives_every_process_a_container_and_the_seed():
    config = (REPO / "conf" / "modules.config").read_text()
    assert re.search(r"withName: '\.\*' \{[^}]*container\s*=\s*params\.container_cpu", config, re.S)
    assert "params.container_gpu" in config and "params.container_baselines" in config
    for process in ("QC", "EMBED", "TRAIN_VAE", "METACELLS", "PEAK2GENE", "EVALUATE", "BASELINES"):
        body = config.split(f"withName: '{process}'")[1].split("withName:")[0]
        assert "opt('--seed'" in body, f"{process} gets no --seed"


def test_steps_get_the_graph_hvg_and_window_parameters():
    """BASELINES builds its kernel on the same kNN k as COEM and uses the pipeline's HVGs and
    peak-to-gene window; EVALUATE uses the pipeline's HVGs (its diffusion maps keep SEACells' k)."""
    config = (REPO / "conf" / "modules.config").read_text()
    baselines = config.split("withName: 'BASELINES'")[1].split("withName:")[0]
    assert "opt('--k',          params.knn_k)" in baselines
    assert "params.n_hvg" in baselines and "params.p2g_window" in baselines
    evaluate = config.split("withName: 'EVALUATE'")[1].split("withName:")[0]
    assert "params.n_hvg" in evaluate
    from coem.cli import baselines as cli_baselines, evaluate as cli_evaluate  # the options exist
    for cli, flags in ((cli_baselines, ("--k", "--n-hvg", "--p2g-window", "--seed")), (cli_evaluate, ("--n-hvg", "--seed"))):
        source = Path(cli.__file__).read_text() + (REPO / "coem" / "cli" / "_common.py").read_text()
        for flag in flags:
            assert f'"{flag}"' in source, f"{cli.__name__} has no {flag}"
