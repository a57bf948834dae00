#!/usr/bin/env bash
# The main job: on the embedded SynthFER data (lab -> wild, smoke profile on CPU, full on a GPU),
# train source-only, DANN, CDAN-E and the target-supervised oracle, and write reports/compare/results.md.
# Extra arguments go to `fer-lab compare` (e.g. --profile full --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
.venv/bin/fer-lab compare --source synth:lab --target synth:wild --out-dir reports/compare "$@"
