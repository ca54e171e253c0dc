#!/usr/bin/env bash
# The demo on a fresh machine: its own virtual environment, then `modelserver demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cpu]'
exec .venv/bin/modelserver demo "$@"
