#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv. Idempotent: a stamp of the dependency
# files skips the install when nothing changed. Nothing is downloaded at run time beyond the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${FER_LAB_VENV:-.venv}
# Chromium for the browser test (tests/test_jupyterlab_browser.py, driven by Playwright): Debian's package, installed
# where we are root and apt-get works; elsewhere that test is skipped and says why. Nothing to do once it is there.
# FER_LAB_BROWSER=0 leaves the browser alone.
if [ "${FER_LAB_BROWSER:-1}" != 0 ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the browser test ..." >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null; then
    echo "warning: apt-get could not install chromium; the browser test will be skipped" >&2
  fi
fi
stamp_src=$(cat pyproject.toml requirements/constraints.txt requirements/no-deps.txt | sha1sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.fer-lab-stamp" 2>/dev/null)" = "$stamp_src" ]; then
  exit 0
fi
echo "setting up $VENV with $("$PY" --version) ..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned (a bare 'torch' requirement can pull several GB of a newer build)
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt torch torchvision
"$VENV/bin/python" -m pip install -q -c requirements/constraints.txt -e ".[dev]"
# packages whose metadata pins an old torch/numpy but whose code works here: without their dependencies
"$VENV/bin/python" -m pip install -q --no-deps -r requirements/no-deps.txt
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "$stamp_src" > "$VENV/.fer-lab-stamp"
