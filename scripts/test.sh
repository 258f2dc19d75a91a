#!/usr/bin/env bash
# Install (or refresh) .venv, then lint, type-check and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
.venv/bin/ruff check thalamus tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the layers contracts in pyproject.toml
.venv/bin/pytest -q -p no:cacheprovider "$@"
