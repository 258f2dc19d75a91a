"""A stand-in for vLLM's OpenAI api_server, for the supervisor tests (tests/serving/test_vllm_faults.py).

Run as ``python -m vllm.entrypoints.openai.api_server`` through a stub package whose module calls
:func:`main`; it takes the arguments serve-local passes (only ``--port`` and ``--served-model-name``
matter). What it does is read from the file named by ``$THALAMUS_VLLM_STUB_MODE``: ``exit`` ends the
process at once (code 3); ``silent`` never answers (nothing listens); ``serve`` answers ``/health`` and
chats with a minimal OpenAI answer; ``unhealthy`` (read at each request) answers ``/health`` with 500.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _mode() -> str:
    return Path(os.environ["THALAMUS_VLLM_STUB_MODE"]).read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    args, _ = parser.parse_known_args()
    mode = _mode()
    if mode == "exit":
        sys.exit(3)
    if mode == "silent":
        time.sleep(600)  # stopped by the supervisor long before
        return
    name = args.served_model_name

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            ok = self.path == "/health" and _mode() != "unhealthy"
            self._send(200 if ok else 500, {})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            choices = [{"index": i, "message": {"role": "assistant", "content": f"stub {request['model']}"},
                        "finish_reason": "stop"} for i in range(request.get("n", 1))]
            self._send(200, {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": name,
                             "choices": choices,
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
