#!/usr/bin/env bash
# The main job, on the embedded SynthFER data (sets up .venv on first use):
#   1. a quick CD-FER bench: source synth:wild -> targets synth:lab, synth:lowres; source-only, DANN, CDAN-E and the
#      target oracle from one shared, cached stage 1; 3 seeds; two cells at a time, one thread each
#      -> reports/bench/bench.md (three selection rules, paired 95 % intervals), bench.json, bench.png
#   2. every numbered notebook executed with papermill -> reports/notebooks/ (executed .ipynb + HTML + summary);
#      the notebooks' own benches reuse the cells and stage-1 runs of step 1 (bench_dir=reports/bench)
# PROFILE (auto: smoke on CPU, full on CUDA), DEVICE (auto) and WORKERS (2) select the budget, device and pool.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
PROFILE=${PROFILE:-auto}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-2}
if [ "$DEVICE" = auto ]; then
  DEVICE=$(.venv/bin/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
start=$(date +%s)
.venv/bin/fer-lab bench --profile "$PROFILE" --device "$DEVICE" --workers "$WORKERS" \
  --source synth:wild --target synth:lab,synth:lowres --methods source_only,dann,cdan --seeds 0,1,2 \
  --out reports/bench --no-progress
bench_end=$(date +%s)
.venv/bin/fer-lab notebooks run --profile "$PROFILE" --device "$DEVICE" --out reports/notebooks \
  --bench-dir "$PWD/reports/bench"
end=$(date +%s)
echo "main job: bench $((bench_end - start)) s, notebooks $((end - bench_end)) s, total $((end - start)) s"
