"""Fixtures for the gateway tests: a replay upstream and gateways on loopback, real SQLite ledgers.

The router is a real baseline router fitted on a small synthetic RoutingDataset (three models
with a clear quality/cost trade-off), saved and loaded as an artifact the way the gateway
loads any router. Helpers live in gwhelpers.py (this folder is on sys.path for its tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gwhelpers import GatewayFactory, base_config, synthetic_dataset

from thalamus.datasets.schema import RoutingDataset
from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.server import create_replay_app
from thalamus.gateway.replay.threaded import ThreadedServer
from thalamus.router.baselines import BestSingleRouter


@pytest.fixture(scope="session")
def dataset() -> RoutingDataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory, dataset: RoutingDataset) -> Path:
    out = tmp_path_factory.mktemp("router") / "best-single"
    BestSingleRouter().fit(dataset).save(out)
    return out


@pytest.fixture(scope="session")
def replay(dataset: RoutingDataset) -> Iterator[ThreadedServer]:
    # log_level critical: the 'drop' fault makes uvicorn log a traceback by design
    with ThreadedServer(create_replay_app(dataset), log_level="critical") as server:
        yield server


@pytest.fixture
def make_gateway(replay: ThreadedServer, artifact: Path, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start extra gateways with config overrides; each gets its own ledger file."""
    started: list[ThreadedServer] = []

    def factory(faults: dict[str, str] | None = None, provider: str = "litellm", **overrides: Any) -> ThreadedServer:
        ledger = tmp_path / f"ledger{len(started)}.sqlite"
        config = config_from_dict(base_config(replay.url, artifact, ledger, faults, provider, **overrides))
        server = ThreadedServer(create_app(config)).start()
        server.ledger_path = ledger  # type: ignore[attr-defined]
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def gateway(replay: ThreadedServer, artifact: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ThreadedServer]:
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    config = config_from_dict(base_config(replay.url, artifact, ledger))
    with ThreadedServer(create_app(config)) as server:
        server.ledger_path = ledger  # type: ignore[attr-defined]
        yield server


from pgserver import db_url, own_pg_server, pg_admin_url, pg_url  # noqa: E402, F401  (PostgreSQL fixtures)
