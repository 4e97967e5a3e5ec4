#!/usr/bin/env bash
# Set up, then build a small lab (a datacenter server, a laptop behind a home router behind an
# ISP router), run a UDP and a TCP exchange in it and print a report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/patchbay demo "$@"
