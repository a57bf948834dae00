#!/usr/bin/env bash
# The whole test suite (sets up .venv on first use). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
set +e
# Every notebook run top to bottom by nbval in a fresh kernel (FER_LAB_PROFILE=tiny: the notebooks' "auto" profile
# then only checks that each cell runs), then tests/. The notebooks run first and once: tests/test_notebooks.py
# checks the metrics those runs wrote (files newer than FER_LAB_SUITE_START) instead of running them again.
# A cell still running after 300 s fails (named) instead of holding the run; a crash prints every thread's stack.
export PYTHONFAULTHANDLER=1
export FER_LAB_SUITE_START=$(date +%s)
FER_LAB_PROFILE=${FER_LAB_PROFILE:-tiny} .venv/bin/python -m pytest notebooks tests --nbval-lax \
  --nbval-cell-timeout 300 --nbval-sanitize-with tests/nbval_sanitize.cfg "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit $rc
