#!/usr/bin/env bash
# Install (or refresh) .venv, then run the main job: the routing gateway demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/thalamus demo "$@"
