"""Shared test setup: offline everywhere, data location, a temp cache per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pathlib import Path

import pytest

from thalamus.config import Settings


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder; tests that need it are skipped loudly when it is absent."""
    path = Settings().data_dir
    if not path.is_dir():
        pytest.skip(f"DATA MISSING: {path} does not exist; set THALAMUS_DATA_DIR to the shared data folder")
    return path
