"""Local torch-backed, OpenAI-compatible model serving (dense and Mixture-of-Experts models).

``thalamus serve-local --config local.yaml`` runs :func:`thalamus.serving.app.create_app`; the gateway
reaches it like any other OpenAI-compatible backend. Modules: config (YAML settings), models (prepare
SmolLM2, build tiny MoE models), pool (memory-budgeted model pool), engine (batched decode loop),
batching (gather window + worker thread), moe (expert-load telemetry), protocol (OpenAI shapes and
errors), metrics (Prometheus), app/api (FastAPI).
"""
