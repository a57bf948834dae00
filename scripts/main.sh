#!/usr/bin/env bash
# The main job, on the embedded SynthFER data (sets up .venv on first use):
#   1. a quick CD-FER bench: source synth:wild -> target synth:lab; source-only, DANN, CDAN-E, AGLRLS and the target
#      oracle from one shared, cached stage 1; 3 seeds; two cells at a time, one thread each
#      -> reports/bench/bench.md (three selection rules, paired 95 % intervals), bench.json, bench.png
#      (the default benchmark, three targets: `.venv/bin/fer-lab bench`)
#   2. every numbered notebook executed with papermill, two at a time on a CPU -> reports/notebooks/ (executed
#      .ipynb + HTML + summary), without their optional sections (ablations, extra tables: fer_lab.notebooks.QUICK);
#      the notebooks' own benches reuse the cells and stage-1 runs of step 1 (bench_dir=reports/bench)
#   3. the SynthFER gallery, one PNG per domain, a row per class -> reports/synth/
# PROFILE (auto: smoke on CPU, full on CUDA), DEVICE (auto) and WORKERS (2) select the budget, device and pool;
# QUICK (auto: on for the CPU, off for CUDA; 1 or 0) the notebooks' cuts; LANES (auto: WORKERS on the CPU, 1 on CUDA)
# how many notebooks run at once (each kernel one thread, one bench worker).
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
QUICK=${QUICK:-auto}
if [ "$QUICK" = auto ]; then QUICK=$([ "$DEVICE" = cpu ] && echo 1 || echo 0); fi
quick_flag=$([ "$QUICK" = 1 ] && echo --quick || true)
LANES=${LANES:-auto}
if [ "$LANES" = auto ]; then LANES=$([ "$DEVICE" = cpu ] && echo "$WORKERS" || echo 1); fi
start=$(date +%s)
.venv/bin/fer-lab bench --profile "$PROFILE" --device "$DEVICE" --workers "$WORKERS" \
  --source synth:wild --target synth:lab --methods source_only,dann,cdan,aglrls --seeds 0,1,2 \
  --out reports/bench --no-progress
bench_end=$(date +%s)
.venv/bin/fer-lab notebooks run --profile "$PROFILE" --device "$DEVICE" --out reports/notebooks \
  --bench-dir "$PWD/reports/bench" --lanes "$LANES" $quick_flag
notebooks_end=$(date +%s)
.venv/bin/fer-lab synth gallery --out reports/synth
end=$(date +%s)
echo "main job: bench $((bench_end - start)) s, notebooks $((notebooks_end - bench_end)) s, gallery $((end - notebooks_end)) s, total $((end - start)) s"
