#!/usr/bin/env bash
# Create the benchmark's own environment with TopoStats (never a dependency of ecafm).
# Usage: bash benchmarks/setup_topostats.sh [python]   -> benchmarks/.venv-topostats
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${1:-python3}"
venv="$here/.venv-topostats"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet topostats
"$venv/bin/python" -c "import topostats, importlib.metadata as m; print('topostats', m.version('topostats'))"
