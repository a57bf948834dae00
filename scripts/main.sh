#!/usr/bin/env bash
# The main job, on the embedded SynthFER data (sets up .venv on first use):
#   1. source-only, DANN, CDAN-E and the target-supervised oracle on lab -> wild -> reports/compare/results.md
#   2. every numbered notebook executed with papermill -> reports/notebooks/ (executed .ipynb + HTML + summary)
# PROFILE (auto: smoke on CPU, full on CUDA) and DEVICE (auto) select the budget and the device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
PROFILE=${PROFILE:-auto}
DEVICE=${DEVICE:-auto}
.venv/bin/fer-lab compare --source synth:lab --target synth:wild --profile "$PROFILE" --device "$DEVICE" \
  --out-dir reports/compare
.venv/bin/fer-lab notebooks run --profile "$PROFILE" --device "$DEVICE" --out reports/notebooks
