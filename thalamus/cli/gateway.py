"""Gateway commands: ``serve``, ``config check``, ``logs`` (+ ``logs export``), ``replay-server``, ``demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from thalamus.errors import ConfigError
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER, embedder_help

if TYPE_CHECKING:
    from thalamus.gateway.app import Startup
    from thalamus.gateway.config import GatewayConfig

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Gateway YAML config.")]


def serve_cmd(
    config: ConfigOpt = Path("thalamus.yaml"),
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
) -> None:
    """Start the OpenAI-compatible routing gateway (one JSON access-log line per request on stderr)."""
    import uvicorn

    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import load_config
    from thalamus.gateway.stats.access_log import stderr_access_log

    cfg = load_config(config)
    startup = _checked(config, cfg)  # the checks config check runs, before uvicorn: errors are one line
    stderr_access_log()
    uvicorn.run(create_app(cfg, startup=startup), host=host or cfg.server.host,
                port=port if port is not None else cfg.server.port, log_level="info", access_log=False)


def _checked(file: Path, cfg: GatewayConfig) -> Startup:
    """``check_startup`` (shared with ``serve``'s lifespan), its errors and warnings naming the file."""
    from thalamus.gateway.app import check_startup

    try:
        startup = check_startup(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    for warning in startup.warnings:
        Console(stderr=True).print(f"[yellow]warning[/] {file}: {warning}")
    return startup


def config_check_cmd(file: Annotated[Path, typer.Argument(help="YAML config to validate.")]) -> None:
    """Run the checks ``thalamus serve`` runs at start-up: the YAML (duplicate keys refused), the schema, the
    ledger URL's database driver, each router artifact loads and its models against the backends (which ones a
    router serves, adds from a prior, or ignores). Errors name the key and the fix."""
    from thalamus.gateway.config import load_config

    cfg = load_config(file)
    _checked(file, cfg)
    Console().print(f"[green]ok[/] {file}: {len(cfg.backends)} backends, routers: "
                    f"{', '.join(cfg.routers) or 'none'}")


def _ledger(config: Path | None, ledger: str | None) -> str:
    from thalamus.gateway.app import ledger_url
    from thalamus.gateway.config import GatewayConfig, LedgerConfig, load_config

    if ledger:
        return ledger
    if config is not None and config.exists():
        return ledger_url(load_config(config))
    return ledger_url(GatewayConfig.model_construct(ledger=LedgerConfig()))


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and value == value else None  # NaN -> None


def _log_cells(rec: dict[Any, Any]) -> list[str]:
    from datetime import datetime

    prompt, completion, ms, cost = (_num(rec.get(k)) for k in
                                    ("prompt_tokens", "completion_tokens", "total_ms", "cost_usd"))
    return [datetime.fromtimestamp(float(rec["created_at"])).strftime("%H:%M:%S"), str(rec["status"]),
            str(rec["requested_model"]), str(rec.get("router") or ""), str(rec.get("chosen_model") or ""),
            "" if ms is None else f"{ms:.1f}",
            "" if prompt is None else f"{int(prompt)}+{int(completion or 0)}",
            "" if cost is None else f"{cost:.6f}"]


LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger URL (default: from --config).")]


def logs_cmd(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many recent rows.")] = 20,
    config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Recent ledger rows (one per request)."""
    if ctx.invoked_subcommand is not None:
        return
    from thalamus.ledger import Ledger

    db = Ledger(_ledger(config, ledger))
    df = db.recent(limit)
    db.close()
    table = Table(title=f"last {len(df)} requests")
    for col in ("created", "status", "requested", "router", "chosen", "ms", "tokens", "cost $"):
        table.add_column(col, overflow="fold")
    for rec in df.to_dict("records"):
        table.add_row(*_log_cells(rec))
    Console().print(table)


def logs_export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write (a RoutingDataset).")],
    config: Annotated[Path | None, typer.Option("--config", "-c")] = Path("thalamus.yaml"),
    ledger: LedgerOpt = None,
) -> None:
    """Rows with feedback -> a RoutingDataset Parquet file for re-training."""
    from thalamus.ledger import Ledger

    db = Ledger(_ledger(config, ledger))
    try:
        ds = db.export(name=out.stem)
    finally:
        db.close()
    ds.to_parquet(out)
    Console().print(f"wrote {out}: {ds.n_prompts} prompts x {ds.n_models} models")


def replay_cmd(
    data: Annotated[str, typer.Option("--data", help="Dataset name or RoutingDataset file with responses.")],
    host: str = "127.0.0.1",
    port: int = 8001,
    delay_ms: Annotated[float, typer.Option("--delay-ms", help="Delay before every answer.")] = 0.0,
    as_: Annotated[list[str] | None, typer.Option(
        "--as", help="NAME=RECORDED: answer requests to NAME with RECORDED's answers (repeatable), "
                     "e.g. --as gpt-4o=gpt-4-1106-preview.")] = None,
) -> None:
    """Serve recorded responses as an OpenAI-compatible upstream."""
    import uvicorn

    from thalamus.datasets.registry import load_dataset
    from thalamus.gateway.replay.server import create_replay_app, parse_aliases

    try:
        aliases = parse_aliases(as_ or [])
        app = create_replay_app(load_dataset(data), delay_ms=delay_ms, aliases=aliases)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--as") from exc
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def demo_cmd(
    limit: Annotated[int, typer.Option(help="Held-out prompts to send.")] = 200,
    router: Annotated[str, typer.Option(help="Router to train (best-single if unavailable).")] = "cluster",
    embedder: Annotated[str, typer.Option(help=embedder_help())] = DEFAULT_EMBEDDER,
    lambda_: Annotated[float, typer.Option("--lambda", help="Cost weight of the knob in [0, 1].")] = 0.05,
    concurrency: int = 8,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report here.")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Keep the gateway and its dashboard up until Ctrl-C.")]
    = False,
    snapshot: Annotated[Path | None, typer.Option("--snapshot", help="Where to write the dashboard snapshot "
                                                   "(default: <cache>/demo/dashboard.html).")] = None,
) -> None:
    """Route held-out RouterBench prompts through a real gateway; compare with always calling GPT-4."""
    import logging

    from thalamus.gateway.replay.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("thalamus").setLevel(logging.INFO)
    result = run_demo(limit=limit, router=router, embedder=embedder,
                      knob={"kind": "lambda", "value": lambda_}, concurrency=concurrency, serve=serve,
                      snapshot=snapshot)
    report = result.report()
    console = Console()
    share = Table(title=f"{report['requests']} requests routed by {report['router']} (lambda={lambda_})")
    share.add_column("model")
    share.add_column("share", justify="right")
    for model, value in report["share"].items():
        share.add_row(model, f"{value:.1%}")
    console.print(share)
    summary = Table(title="vs always calling gpt-4-1106-preview")
    for col in ("", "accuracy", "cost (recorded) $", "cost (ledger) $"):
        summary.add_column(col, justify="right")
    summary.add_row("router", f"{report['accuracy']:.3f}", f"{report['recorded_cost']:.4f}",
                    f"{report['ledger_cost']:.4f}")
    summary.add_row("gpt-4", f"{report['accuracy_gpt4']:.3f}", f"{report['recorded_cost_gpt4']:.4f}", "")
    console.print(summary)
    saving = 1 - report["recorded_cost"] / report["recorded_cost_gpt4"]
    console.print(f"cost saving {saving:.1%}; ledger rows written: {report['ledger_rows']}")
    console.print(f"dashboard snapshot: {result.snapshot}")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    config_app = typer.Typer(help="Gateway configuration.", no_args_is_help=True)
    config_app.command("check")(config_check_cmd)
    app.add_typer(config_app, name="config")
    logs_app = typer.Typer(help="The decision ledger.", invoke_without_command=True)
    logs_app.callback(invoke_without_command=True)(logs_cmd)
    logs_app.command("export")(logs_export_cmd)
    app.add_typer(logs_app, name="logs")
    app.command("replay-server")(replay_cmd)
    app.command("demo")(demo_cmd)
