"""``thalamus rollout ...``: hot reload, shadow, canary and promotion on a running gateway.

Thin clients of the gateway's admin endpoints (``thalamus.gateway.http.rollout``); the admin key is
read from an environment variable (default ``THALAMUS_ADMIN_KEY``), never from the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from thalamus.errors import ConfigError

GatewayOpt = Annotated[str, typer.Option("--gateway", help="Gateway base URL.")]
KeyOpt = Annotated[str, typer.Option("--admin-key-env", help="Environment variable holding the admin key.")]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_KEY_ENV = "THALAMUS_ADMIN_KEY"


def call(gateway: str, key_env: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin call; a non-2xx answer becomes a ConfigError carrying the gateway's message."""
    import httpx

    key = os.environ.get(key_env)
    if not key:
        raise ConfigError(f"set {key_env} to the gateway's admin key (admin.key / admin.key_env in its config)")
    try:
        r = httpx.request(method, gateway.rstrip("/") + path, json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        raise ConfigError(f"{gateway}: {type(exc).__name__}: {exc}") from None
    data: dict[str, Any] = r.json() if r.content else {}
    if r.status_code >= 300:
        raise ConfigError(f"{gateway}{path}: HTTP {r.status_code}: {data.get('error', {}).get('message', r.text)}")
    return data


def _print(data: dict[str, Any]) -> None:
    Console().print_json(json.dumps(data))


def status_cmd(gateway: GatewayOpt = DEFAULT_URL, admin_key_env: KeyOpt = DEFAULT_KEY_ENV) -> None:
    """Serving and candidate artifacts of every router."""
    _print(call(gateway, admin_key_env, "GET", "/admin/routers"))


def reload_cmd(name: Annotated[str, typer.Argument(help="Router name in the gateway config.")],
               artifact: Annotated[Path | None, typer.Option(help="Artifact dir (default: the configured one).")
                                   ] = None,
               gateway: GatewayOpt = DEFAULT_URL, admin_key_env: KeyOpt = DEFAULT_KEY_ENV) -> None:
    """Hot reload: serve a freshly loaded artifact without restarting the gateway."""
    body = {"artifact": str(artifact.resolve())} if artifact else {}
    _print(call(gateway, admin_key_env, "POST", f"/admin/routers/{name}/reload", body))


def candidate_cmd(name: Annotated[str, typer.Argument(help="Router name in the gateway config.")],
                  artifact: Annotated[Path, typer.Option(help="Candidate artifact dir.")],
                  mode: Annotated[str, typer.Option(help="shadow or canary.")] = "shadow",
                  share: Annotated[float, typer.Option(help="Canary share of the router's traffic.")] = 0.05,
                  gateway: GatewayOpt = DEFAULT_URL, admin_key_env: KeyOpt = DEFAULT_KEY_ENV) -> None:
    """Start a shadow or canary candidate for a router."""
    _print(call(gateway, admin_key_env, "POST", f"/admin/routers/{name}/candidate",
                {"artifact": str(artifact.resolve()), "mode": mode, "share": share}))


def stop_cmd(name: Annotated[str, typer.Argument(help="Router name in the gateway config.")],
             gateway: GatewayOpt = DEFAULT_URL, admin_key_env: KeyOpt = DEFAULT_KEY_ENV) -> None:
    """Stop a router's shadow or canary."""
    _print(call(gateway, admin_key_env, "DELETE", f"/admin/routers/{name}/candidate"))


def promote_cmd(name: Annotated[str, typer.Argument(help="Router name in the gateway config.")],
                gateway: GatewayOpt = DEFAULT_URL, admin_key_env: KeyOpt = DEFAULT_KEY_ENV) -> None:
    """Make a router's candidate its serving artifact."""
    _print(call(gateway, admin_key_env, "POST", f"/admin/routers/{name}/promote"))


def register(app: typer.Typer) -> None:
    rollout = typer.Typer(no_args_is_help=True, help="Hot reload, shadow, canary and promotion on a running gateway.")
    rollout.command("status")(status_cmd)
    rollout.command("reload")(reload_cmd)
    rollout.command("candidate")(candidate_cmd)
    rollout.command("stop")(stop_cmd)
    rollout.command("promote")(promote_cmd)
    app.add_typer(rollout, name="rollout")
