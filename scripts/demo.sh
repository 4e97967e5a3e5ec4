#!/usr/bin/env bash
# Set up, then run a sim of sims/: UDP hole punching between two peers behind their own NATs
# (home, full-cone, corporate), each variant in its own lab; results in .patchbay-work/latest/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/patchbay run sims/holepunch.toml --jobs 3 "$@"
