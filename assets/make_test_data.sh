#!/usr/bin/env bash
# Regenerate the simulated test data shipped in assets/test_data (used by -profile test and the demo).
# Two samples in two input formats, different seeds: sim1 as a 10x cellranger-arc h5, sim2 as MuData.
set -euo pipefail
cd "$(dirname "$0")/.."
out=assets/test_data
rm -rf "$out" && mkdir -p "$out"
common=(--n-cells 600 --n-genes 400 --n-peaks 3000 --n-types 4 --trajectory-fraction 0.3 --outdir "$out")
python bin/coem_simulate.py "${common[@]}" --seed 1 --format 10x  --prefix sim1
python bin/coem_simulate.py "${common[@]}" --seed 2 --format h5mu --compression gzip --prefix sim2
rm -f "$out/versions.yml"
ls -la "$out"
