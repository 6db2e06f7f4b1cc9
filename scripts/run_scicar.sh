#!/usr/bin/env bash
# Run the whole pipeline on the real sci-CAR A549 data in ../shared/data (never copied into the repo).
#   bash scripts/run_scicar.sh [extra nextflow args, e.g. --embedding pca_lsi]
# Writes results_scicar/ (and scicar_input/ with the labels CSV and samplesheet).
# No QC or resource flags: the QC thresholds are derived from the sample itself (--qc_mode auto; sci-CAR is
# much sparser than 10x Multiome), and the resource caps default to this machine's CPUs and memory.
# The earlier fixed thresholds, for comparison: --qc_mode fixed --qc_min_rna_counts 200 --qc_min_genes 100
# --qc_min_atac_counts 100 --qc_min_peaks 100
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/data/scicar_a549/scicar_a549.h5mu
[ -f "$data" ] || { echo "ERROR: $data not found (the shared data folder must sit next to the repo)" >&2; exit 1; }
mkdir -p scicar_input
# Labels: the dexamethasone time (0, 1, 3 h) stored in the file's obs.
python - "$data" scicar_input/scicar_labels.csv <<'PY'
import sys, warnings
warnings.simplefilter("ignore")
import mudata
m = mudata.read_h5mu(sys.argv[1])
m.obs["dex_time_h"].astype(str).map(lambda t: f"{t}h").rename("label").rename_axis("barcode").to_csv(sys.argv[2])
PY
printf 'sample,h5mu,labels\nscicar_a549,%s,scicar_labels.csv\n' "$(realpath "$data")" > scicar_input/samplesheet.csv
./nextflow run . --input scicar_input/samplesheet.csv --outdir results_scicar "$@"
