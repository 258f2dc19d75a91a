"""The backend for each configured model: litellm unless ``provider: openai-compatible``; a group of
deployments for a backend with ``deployments``."""

from __future__ import annotations

from thalamus.gateway.config import BackendConfig
from thalamus.gateway.upstream.base import Backend
from thalamus.gateway.upstream.deployments import DeploymentGroup
from thalamus.gateway.upstream.litellm_backend import LiteLLMBackend
from thalamus.gateway.upstream.openai_compat import OpenAICompatBackend


def make_backend(config: BackendConfig) -> Backend:
    """The backend for a config entry: litellm unless ``provider: openai-compatible``; a group of them
    for a backend with ``deployments`` (gateway/upstream/deployments.py)."""
    if config.deployments:
        return DeploymentGroup(config, make_backend)
    if config.provider == "openai-compatible":
        return OpenAICompatBackend(config)
    return LiteLLMBackend(config)


def make_backends(configs: list[BackendConfig]) -> dict[str, Backend]:
    return {c.name: make_backend(c) for c in configs}
