#!/usr/bin/env bash
# Set up, then run the whole test suite (in parallel: every test's lab is its own namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check patchbay_core plugins tests benchmarks
exec .venv/bin/python -m pytest -n 2 -q "$@"
