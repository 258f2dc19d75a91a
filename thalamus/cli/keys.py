"""``thalamus keys create|list|update|rotate|revoke`` and ``thalamus teams set|list``: virtual API keys and
teams in the ledger database (no running gateway needed).

Running gateways see a new, changed, rotated or revoked key (and a team's limits) within ``auth.sync_ms``.
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
    role: Annotated[str | None, typer.Option(help="key (default) or team_admin (reads its team's rows).")] = None,
    expires_at: Annotated[str | None, typer.Option(help="Epoch seconds or ISO 8601 time it stops working.")] = None,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Create a virtual key; prints its secret once (only its hash is stored)."""
    from thalamus.gateway.tenancy.keys import record_from

    fields: dict[str, Any] = {"id": key_id, "models": _names(models), "routers": _names(routers),
                              "budget_day_usd": budget_day, "budget_month_usd": budget_month, "rpm": rpm,
                              "tpm": tpm, "team": team, "owner": owner, "metadata": _json(metadata),
                              "role": role, "expires_at": _when(expires_at)}
    store, static = _store(config, ledger)
    record, secret = store.create(record_from(fields), static)
    Console().print_json(json.dumps({**record.public(), "key": secret}))


def update_cmd(
    key_id: Annotated[str, typer.Argument(help="The key id.")],
    models: Annotated[str | None, typer.Option(help="Allowed backends, comma-separated; '*': any.")] = None,
    routers: Annotated[str | None, typer.Option(help="Allowed routers, comma-separated; '*': any.")] = None,
    budget_day: Annotated[float | None, typer.Option(help="USD per UTC day; -1: none.")] = None,
    budget_month: Annotated[float | None, typer.Option(help="USD per UTC month; -1: none.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute; -1: none.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute; -1: none.")] = None,
    team: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option(help="key or team_admin.")] = None,
    expires_at: Annotated[str | None, typer.Option(help="Epoch seconds or ISO 8601; 'never': no expiry.")] = None,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Change a key's scope, limits, team, role or expiry; only the options given change (the secret stays)."""
    given: dict[str, Any] = {"budget_day_usd": budget_day, "budget_month_usd": budget_month, "rpm": rpm,
                             "tpm": tpm, "team": team, "owner": owner, "role": role}
    fields = {k: (None if isinstance(v, int | float) and v < 0 else v) for k, v in given.items() if v is not None}
    for name, text in (("models", models), ("routers", routers)):
        if text is not None:
            fields[name] = None if text.strip() == "*" else _names(text)
    if expires_at is not None:
        fields["expires_at"] = None if expires_at == "never" else _when(expires_at)
    store, _ = _store(config, ledger)
    Console().print_json(json.dumps(store.update(key_id, fields).public()))


def rotate_cmd(
    key_id: Annotated[str, typer.Argument(help="The key id.")],
    grace: Annotated[float, typer.Option(help="Seconds the old secret keeps working.")] = 3600.0,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """A new secret for a key (printed once); the old one works for --grace seconds more."""
    store, _ = _store(config, ledger)
    record, secret = store.rotate(key_id, grace)
    Console().print_json(json.dumps({**record.public(), "key": secret, "grace_s": grace}))


def team_set_cmd(
    team_id: Annotated[str, typer.Argument(help="The team name (as keys give it in --team).")],
    budget_day: Annotated[float | None, typer.Option(help="USD per UTC day over all its keys.")] = None,
    budget_month: Annotated[float | None, typer.Option(help="USD per UTC month over all its keys.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute over all its keys.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute over all its keys.")] = None,
    metadata: Annotated[str | None, typer.Option(help="A JSON object.")] = None,
    config: ConfigOpt = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Create a team or replace its limits (unset options: no limit)."""
    from thalamus.gateway.tenancy.teams import TeamStore, team_from

    store, _ = _store(config, ledger)
    team = team_from({"id": team_id, "budget_day_usd": budget_day, "budget_month_usd": budget_month,
                      "rpm": rpm, "tpm": tpm, "metadata": _json(metadata)})
    Console().print_json(json.dumps(TeamStore(store.engine).put(team).public()))


def team_list_cmd(config: ConfigOpt = Path("thalamus.yaml"), ledger: LedgerOpt = None) -> None:
    """List teams and their limits."""
    from thalamus.gateway.tenancy.teams import TeamStore

    store, _ = _store(config, ledger)
    Console().print_json(json.dumps([t.public() for t in TeamStore(store.engine).load().values()]))


def _json(text: str | None) -> Any:
    from thalamus.errors import ConfigError

    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--metadata is not JSON: {exc}") from None


def _when(text: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC when it names no zone)."""
    from datetime import UTC, datetime

    from thalamus.errors import ConfigError

    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--expires-at: {text!r} is neither epoch seconds nor an ISO 8601 time") from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


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
    keys_app.command("update")(update_cmd)
    keys_app.command("rotate")(rotate_cmd)
    keys_app.command("revoke")(revoke_cmd)
    app.add_typer(keys_app, name="keys")
    teams_app = typer.Typer(help="Teams: budgets and rate limits over all their keys.", no_args_is_help=True)
    teams_app.command("set")(team_set_cmd)
    teams_app.command("list")(team_list_cmd)
    app.add_typer(teams_app, name="teams")
