"""The row is what the client saw: a non-stream client that closes its connection mid-request gets a 499 row.

Before, the gateway went on waiting for the upstream and recorded a 200 that nobody received (streams were
already 499). The client here is a raw socket that sends a whole request and closes it while the replay's
``hang`` fault holds the answer back; the hang ends only when the gateway cancels its upstream call.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from gwhelpers import backend, base_config, ledger_rows

from thalamus.gateway.app import create_app
from thalamus.gateway.config import config_from_dict
from thalamus.gateway.replay.threaded import ThreadedServer


def _hang_requests(replay: ThreadedServer) -> int:
    requests = replay.server.config.app.state.replay.requests  # type: ignore[union-attr]
    return sum(str(r.get("model", "")).endswith("hang") for r in requests)


def _send_and_close_once_upstream(url: str, body: dict[str, Any], replay: ThreadedServer) -> None:
    """Send the whole request, wait until the gateway's call is at the upstream, then close the socket."""
    raw, before = json.dumps(body).encode(), _hang_requests(replay)
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
        deadline = time.monotonic() + 30
        while _hang_requests(replay) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _hang_requests(replay) == before + 1, "the request never reached the upstream"
        time.sleep(0.1)


@pytest.mark.parametrize("provider", ["litellm", "openai-compatible"])
@pytest.mark.parametrize("stream", [False, True])
def test_client_that_leaves_mid_request_is_a_499_row(replay: ThreadedServer, artifact: Path, tmp_path: Path,
                                                     provider: str, stream: bool) -> None:
    config = base_config(replay.url, artifact, tmp_path / "ledger.sqlite", provider=provider)
    config["backends"].append(backend("slow", "weak::hang", replay.url + "/v1", timeout=30, max_retries=0,
                                      provider=provider))
    with ThreadedServer(create_app(config_from_dict(config))) as gw:
        _send_and_close_once_upstream(gw.url, {"model": "slow", "stream": stream, "messages": [
            {"role": "user", "content": "Hello."}]}, replay)
        t0 = time.monotonic()
        rows = ledger_rows(tmp_path / "ledger.sqlite", 1, timeout=10)
        waited = time.monotonic() - t0
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["status"], row["error_type"], row["requested_model"]) == (499, "client_disconnected", "slow")
    assert waited < 10  # recorded when the client left, not when the upstream's 30 s timeout would end
