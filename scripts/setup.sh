#!/usr/bin/env bash
# Create .venv and install wbsafe with its test tools. Idempotent and quick when done.
# torch is installed first, pinned to the CPU wheel this machine kind carries, so the
# range in pyproject.toml is already met and pip never pulls a multi-GB CUDA build.
# (With a GPU, bring your own torch: `pip install torch` for your CUDA, then `pip install -e .`.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.wbsafe-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
prebuild_kernel() {
  # the weight diff's fused C kernel, built into ~/.cache/wbsafe/native once per source and
  # compiler (quick when built); without a C compiler the diff uses torch, and this says so
  .venv/bin/python -m wbsafe.analyses.weights.diff_kernel || true
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  prebuild_kernel
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev,gguf,ray]"
echo "$want" > "$stamp"
prebuild_kernel
