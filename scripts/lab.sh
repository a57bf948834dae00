#!/usr/bin/env bash
# Opens JupyterLab on the notebooks with the project's kernel: the virtualenv's "python3", which scripts/setup.sh
# registers inside .venv (JUPYTER_PATH puts it ahead of any other kernel of that name in ~/.local or the system).
# Extra arguments go to `jupyter lab` (e.g. --port 8890, --no-browser, or a notebook to open).
set -euo pipefail
cd "$(dirname "$0")/.."
FER_LAB_BROWSER=0 bash scripts/setup.sh
export FER_LAB_CACHE=${FER_LAB_CACHE:-$PWD/.cache/fer-lab}
export JUPYTER_PATH="$PWD/.venv/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
root=(); [ "$(id -u)" != 0 ] || root=(--allow-root)   # jupyter refuses root unless asked (containers)
exec .venv/bin/jupyter lab --ServerApp.root_dir="$PWD/notebooks" "${root[@]}" "$@"
