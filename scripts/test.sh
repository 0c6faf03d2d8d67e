#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (no slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"   # the slowest 25 listed: the suite is kept well under 15 minutes
