#!/usr/bin/env bash
# The whole test suite on a fresh machine: its own virtual environment, everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,cpu,bench]'
exec .venv/bin/python -m pytest "$@"
