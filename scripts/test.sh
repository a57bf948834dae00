#!/usr/bin/env bash
# The whole test suite (sets up .venv on first use). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
set +e
# tests/ plus every notebook run top to bottom by nbval in a fresh kernel (FER_LAB_PROFILE=tiny: the notebooks'
# "auto" profile then only checks that each cell runs; tests/test_notebooks.py checks their smoke-profile figures).
# A cell still running after 300 s fails (named) instead of holding the run; a crash prints every thread's stack.
export PYTHONFAULTHANDLER=1
FER_LAB_PROFILE=${FER_LAB_PROFILE:-tiny} .venv/bin/python -m pytest tests notebooks --nbval-lax \
  --nbval-cell-timeout 300 --nbval-sanitize-with tests/nbval_sanitize.cfg "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit $rc
