"""Local torch-backed, OpenAI-compatible model serving (dense and Mixture-of-Experts models).

``thalamus serve-local --config local.yaml`` runs :func:`thalamus.serving.app.create_app`; the gateway
reaches it like any other OpenAI-compatible backend. Modules: config (YAML settings), models (prepare
SmolLM2, build tiny MoE models), pool (memory-budgeted model pool), engine (batched decode loop),
text (incremental detokenization and stop strings), batching (gather window + worker thread), moe
(expert-load telemetry), protocol (OpenAI request schema, response shapes and ServingError), metrics
(Prometheus), app/api (FastAPI). Error bodies and SSE frames come from :mod:`thalamus.openai_wire`.
"""
