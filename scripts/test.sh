#!/usr/bin/env bash
# Set up (if needed) and run the default test suite (no slow real-model tests).
# The tiny organisms are built (or found cached) first, their variants in parallel; then
# the tests run in WBSAFE_TEST_WORKERS processes (default 2, one per core here; 0 runs them
# in this process), a test file to a worker, each worker on cores/workers torch threads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/wbsafe organisms build
exec .venv/bin/python -m pytest -q -n "${WBSAFE_TEST_WORKERS:-2}" --dist loadfile \
  --durations=25 "$@"   # the slowest 25 listed: the suite is kept well under 15 minutes
