"""``thalamus keys create|list|revoke``: virtual API keys in the ledger database (no running gateway needed).

Running gateways see a new or revoked key within ``auth.sync_ms``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from thalamus.cli.gateway import LedgerOpt, _ledger

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Gateway YAML config (its ledger).")]


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text is not None else None


def create_cmd(
    key_id: Annotated[str | None, typer.Option("--id", help="Key id (default: generated).")] = None,
    models: Annotated[str | None, typer.Option(help="Allowed backends, comma-separated (default: any).")] = None,
    routers: Annotated[str | None, typer.Option(help="Allowed routers, comma-separated (default: any).")] = None,
    budget_day: Annotated[float | None, typer.Option(help="USD per UTC day.")] = None,
    budget_month: Annotated[float | None, typer.Option(help="USD per UTC month.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    team: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object.")] = None,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Create a virtual key; prints its secret once (only its hash is stored)."""
    from thalamus.errors import ConfigError
    from thalamus.gateway.tenancy.keys import record_from

    try:
        meta = json.loads(metadata) if metadata is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--metadata is not JSON: {exc}") from None
    fields: dict[str, Any] = {"id": key_id, "models": _names(models), "routers": _names(routers),
                              "budget_day_usd": budget_day, "budget_month_usd": budget_month, "rpm": rpm,
                              "tpm": tpm, "team": team, "owner": owner, "metadata": meta}
    store, static = _store(config, ledger)
    record, secret = store.create(record_from(fields), static)
    Console().print_json(json.dumps({**record.public(), "key": secret}))


def list_cmd(
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """List virtual keys (never their secrets)."""
    store, _ = _store(config, ledger)
    records = store.list(include_revoked=revoked)
    if as_json:
        Console().print_json(json.dumps([r.public() for r in records]))
        return
    table = Table("id", "prefix", "team", "owner", "models", "routers", "$/day", "$/month", "rpm", "tpm", "revoked")
    for r in records:
        table.add_row(r.id, r.key_prefix or "", r.team or "", r.owner or "", ",".join(r.models or ()) or "*",
                      ",".join(r.routers or ()) or "*", _num(r.budget_day_usd), _num(r.budget_month_usd),
                      _num(r.rpm), _num(r.tpm), "yes" if r.revoked_at else "")
    Console().print(table)


def revoke_cmd(
    key_id: Annotated[str, typer.Argument(help="The key id.")],
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Revoke a virtual key (its id is never reused)."""
    from thalamus.errors import ConfigError

    store, _ = _store(config, ledger)
    if not store.revoke(key_id):
        raise ConfigError(f"no active virtual key {key_id!r}")
    Console().print(f"revoked {key_id}")


def _num(value: float | int | None) -> str:
    return "" if value is None else f"{value:g}"


def _store(config: Path | None, ledger: str | None) -> tuple[Any, frozenset[str]]:
    from thalamus.gateway.config import load_config
    from thalamus.gateway.tenancy.keys import KeyStore
    from thalamus.ledger import Ledger

    static = frozenset(k.id for k in load_config(config).auth.keys) if config is not None and config.exists() \
        else frozenset()
    return KeyStore(Ledger(_ledger(config, ledger)).engine), static


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Virtual API keys (stored hashed in the ledger database).", no_args_is_help=True)
    keys_app.command("create")(create_cmd)
    keys_app.command("list")(list_cmd)
    keys_app.command("revoke")(revoke_cmd)
    app.add_typer(keys_app, name="keys")
