"""Thalamus: an LLM query router and model-selection gateway."""
