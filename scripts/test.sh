#!/usr/bin/env bash
# Install everything the tests need into .venv (core, torch, tf, plot, dev) and run the whole suite.
# The model zoo is exported on first use into ~/.cache/morphonnx/zoo/<versions> (or $MORPHONNX_ZOO).
# pytest exits 5 when it collects no test: that fails this script too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MORPHONNX_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev,torch,tf,plot,llm]"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
