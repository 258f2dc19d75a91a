#!/usr/bin/env bash
# The fast tier, for your own loop: lint, the layers contracts and the in-process tests (no servers, no
# browser, no PostgreSQL, no long model training), on an existing .venv (`bash scripts/venv.sh` makes one).
# CI runs everything (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
.venv/bin/ruff check thalamus tests benchmarks
.venv/bin/lint-imports --no-cache
.venv/bin/pytest -q -p no:cacheprovider -m "not slow" "$@"
