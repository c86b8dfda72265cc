#!/usr/bin/env bash
# Install morphonnx (core only) into .venv and analyze the bundled small CNN on two GPUs and a server CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MORPHONNX_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
MODEL="$("$VENV/bin/python" -c 'import morphonnx; print(morphonnx.DEFAULT_MODEL)')"
mkdir -p demo-out
exec "$VENV/bin/morphonnx" analyze "$MODEL" --profile p100 --profile v100 --profile x86-server-cpu \
    --json demo-out/analysis.json "$@"
