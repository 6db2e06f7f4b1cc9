# COEM-nf developer and user commands. `make demo` and `make test` install what is missing
# (a Python venv with the pinned package, and the pinned Nextflow) on first use.
# `make install` / `make demo` install only what the pipeline runs (`pip install -e .`);
# `make test` and `make bench` add the test tools and the SEACells/Palantir/scanpy baselines
# (`pip install -e ".[test,seacells]"`), which only the tests, benchmarks and --run_baselines use.

PYTHON      ?= python3
VENV        := .venv
VENV_STAMP  := $(VENV)/.installed
TEST_STAMP  := $(VENV)/.installed-test
BROWSER_STAMP := $(VENV)/.browser
NXF_JAR     := .nextflow-dist/nextflow-25.04.4-one.jar
RUN_ENV     := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
PYTEST_ARGS ?=

.PHONY: help install install-test demo test test-fast test-data test-full-data bench clean

help:
	@echo "make install    the venv with what the pipeline runs, and Nextflow (no test/baseline extras)"
	@echo "make demo       install what is missing, run the pipeline on the test data into results/"
	@echo "make test       install what is missing, run the whole test suite (what CI runs)"
	@echo "make test-fast  unit tests only (no Nextflow runs)"
	@echo "make test-data  regenerate assets/test_data with the simulator"
	@echo "make bench      run the benchmark scripts (prints tables, writes benchmarks/out/*.json)"

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(VENV_STAMP)
	$(VENV)/bin/pip install --quiet -e ".[test,seacells]"
	touch $@

# Headless Chromium renders the MultiQC report in a pipeline test; installed from Debian when
# missing and this is root with apt-get (CI), otherwise that one test skips and says why.
$(BROWSER_STAMP): | $(VENV_STAMP)
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing Chromium (Debian package) for the report-rendering test ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "WARNING: could not install Chromium; the report-rendering test will skip"; \
	else echo "NOTE: no Chromium on PATH; the report-rendering test will skip (apt-get install chromium)"; fi
	@touch $@

$(NXF_JAR):
	./nextflow -version >/dev/null

install: $(VENV_STAMP) $(NXF_JAR)

install-test: install $(TEST_STAMP) $(BROWSER_STAMP)

demo: install
	$(RUN_ENV) ./nextflow run . -profile test --outdir results
	@echo "Report: results/multiqc/multiqc_report.html"

# The tests run Nextflow offline (no plugin is needed; CI machines may have no network).
test: install-test
	$(RUN_ENV) NXF_OFFLINE=true $(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS) tests

test-fast: install-test
	$(RUN_ENV) NXF_OFFLINE=true $(VENV)/bin/python -m pytest -ra -m "not pipeline" $(PYTEST_ARGS) tests

test-data: $(VENV_STAMP)
	$(RUN_ENV) bash assets/make_test_data.sh

test-full-data: $(VENV_STAMP)
	$(RUN_ENV) bin/coem_simulate.py --n-cells 20000 --n-genes 2000 --n-peaks 20000 --seed 1 \
		--format h5mu --outdir test_full --prefix full
	printf 'sample,h5mu,labels\nfull,full.h5mu,full_labels.csv\n' > test_full/samplesheet.csv

bench: $(TEST_STAMP)
	$(RUN_ENV) bash -c 'for b in benchmarks/bench_*.py; do python $$b || exit 1; done'

clean:
	rm -rf work results .nextflow .nextflow.log* benchmarks/out
