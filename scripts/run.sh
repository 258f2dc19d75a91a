#!/usr/bin/env bash
# Install (or refresh) .venv, then run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
exec .venv/bin/thalamus eval --router random --router best-single --router cheapest --router oracle \
  --data routerbench_subset --json runs/baselines.json --plot runs/baselines.png "$@"
