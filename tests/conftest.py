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


# The fast tier (scripts/test-fast.sh, `pytest -m "not slow"`): in-process tests only. A test that starts a
# server (the replay upstream, a gateway on loopback, PostgreSQL, a browser) or a subprocess is marked slow
# here by the fixtures it uses; long model work is marked slow where it is written. CI runs every tier.
SERVER_FIXTURES = frozenset({"replay", "gateway", "make_gateway", "pg_admin_url", "pg_url", "own_pg_server",
                             "db_url", "tiny_server", "servers", "server", "busy", "stack", "local", "trained"})


# long model work, measured with --durations on the 2-core machine (each over ~10 s, or a shared fixture that
# is: the static table's distillation, the BERT router's fine-tuning, the trained MoE)
SLOW_FILES = frozenset({"test_bert.py", "test_ascii_wordpiece.py", "test_static.py", "test_mf.py",
                        "test_offload_load.py", "test_moe_trained.py", "test_embedders.py", "test_truncation.py"})
SLOW_PARAMS = ("[bert]", "[mf]")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if (SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_FILES
                or item.nodeid.endswith(SLOW_PARAMS)):
            item.add_marker(pytest.mark.slow)
