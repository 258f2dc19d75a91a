"""``thalamus serve-local`` as a subprocess on a free loopback port, for the local serving benchmarks.

The serving benchmarks each start one or more local servers with their own settings and talk to them
over HTTP, as clients would; this module holds the start (config file, free port, wait for /healthz)
and the prompts they share.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

PROMPTS = ["Write a poem about the sea.", "Explain how a bicycle works.", "Tell me a story about a fox.",
           "Describe the city of Paris.", "What makes a good breakfast?", "Explain photosynthesis simply.",
           "List some facts about the moon.", "How do airplanes fly?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local(config: dict[str, Any], what: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start serve-local with ``config`` (a local.yaml as a dict); return the process and its base URL once
    /healthz answers (at most ~60 s), else kill it and raise naming ``what``."""
    port = free_port()
    path = Path(tempfile.mkdtemp()) / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-c", "from thalamus.cli import main; main()", "serve-local", "--config", str(path),
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"serve-local ({what}) did not start")


async def stream_one(client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int) -> dict[str, float]:
    """One greedy streamed answer of exactly ``tokens`` tokens: send time, end time, time to first content
    chunk and completion tokens, measured at the client."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, completion = 0.0, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not ttft:
                ttft = time.perf_counter() - start
    return {"start": start, "end": time.perf_counter(), "ttft": ttft, "tokens": completion}
