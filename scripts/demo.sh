#!/usr/bin/env bash
# Install morphonnx into .venv and run the main job on the bundled default model (a CNN trained on
# scikit-learn's digits, BN kept): analyze it on two GPUs and a server CPU, prune the channels whose
# BN scale is under a threshold (verified against the oracle), and compare the two models per device.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MORPHONNX_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[plot]"
MODEL="$("$VENV/bin/python" -c 'import morphonnx; print(morphonnx.DEFAULT_MODEL)')"
mkdir -p demo-out
"$VENV/bin/morphonnx" analyze "$MODEL" --profile p100 --profile v100 --profile x86-server-cpu --top 5 \
    --json demo-out/analysis.json
echo
"$VENV/bin/morphonnx" prune "$MODEL" --threshold 0.95 -o demo-out/pruned.onnx
echo
"$VENV/bin/morphonnx" compare "$MODEL" demo-out/pruned.onnx --profile p100 --profile v100 --top 5 \
    --plot demo-out/compare.png --json demo-out/compare.json --md demo-out/compare.md --csv demo-out/compare.csv
