"""How far rpm, tpm and budgets give way under a burst: every request in flight at once.

A replay upstream on loopback answers every request after 1 s, so a burst of N concurrent requests is all in
flight together, the case where counting tokens only once a row is recorded let everything through. Each
scenario makes a fresh virtual key with one limit, fires its bursts and reads the ledger: requests answered
(rpm), tokens of the answered requests (tpm), spend (budgets). Overshoot = used / limit - 1 (0 or below:
the limit held). Two set-ups: one gateway on SQLite, and two gateways on one PostgreSQL database with each
burst spread over both, once with the counters meeting in the database every ``auth.sync_ms`` (the default:
a burst landing on all replicas within one sync can pass the limit once per replica) and once with
``auth.strict_limits`` (each limited request claims its counts in the database). Repeated ``--runs`` times.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/limits_burst.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from bench_report import load_average, write

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gateway"))  # the private PostgreSQL server of the tests
ADMIN = "sk-bench-admin"
MODEL = "gpt-4-1106-preview"  # priced as in the probe: $10 / $30 per 1M tokens
PROMPT = [{"role": "user", "content": "How far is the moon from the earth, in kilometres?"}]
SYNC_MS = 100  # the default auth.sync_ms


def _config(replay_url: str, ledger_url: str, journal: Path, strict: bool) -> dict[str, Any]:
    return {"backends": [{"name": MODEL, "provider": "openai-compatible", "model": f"openai/{MODEL}",
                          "api_base": replay_url + "/v1", "input_per_m": 10.0, "output_per_m": 30.0,
                          "timeout": 60.0}],
            "ledger": {"url": ledger_url, "flush_ms": 20, "journal_path": str(journal)},
            "auth": {"enabled": True, "admin_key": ADMIN, "sync_ms": SYNC_MS, "strict_limits": strict}}


def _fire(urls: list[str], secret: str, n: int, body: dict[str, Any]) -> int:
    """``n`` requests at once, spread over ``urls``; how many were answered."""
    def one(i: int) -> int:
        r = httpx.post(urls[i % len(urls)] + "/v1/chat/completions", timeout=120,
                       headers={"authorization": f"Bearer {secret}"},
                       json={"model": MODEL, "messages": PROMPT, **body})
        if r.status_code not in (200, 429):
            raise RuntimeError(f"unexpected {r.status_code}: {r.text[:300]}")
        return int(r.status_code == 200)

    with ThreadPoolExecutor(n) as pool:
        return sum(pool.map(one, range(n)))


def _ledger(url: str, key_id: str, rows: int) -> tuple[int, int, float]:
    """(answered, their tokens, spend) of a key once its ``rows`` rows are written."""
    engine = sa.create_engine(url)
    query = sa.text("SELECT count(*), sum(CASE WHEN status = 200 THEN 1 ELSE 0 END), "
                    "coalesce(sum(CASE WHEN status = 200 THEN prompt_tokens + completion_tokens END), 0), "
                    "coalesce(sum(cost_usd), 0) FROM requests WHERE api_key_id = :k")
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                n, ok, tokens, spend = conn.execute(query, {"k": key_id}).one()
            if n >= rows or time.monotonic() > deadline:
                return int(ok or 0), int(tokens), float(spend)
            time.sleep(0.05)
    finally:
        engine.dispose()


Scenario = tuple[str, dict[str, Any], list[tuple[int, dict[str, Any]]], str, float]
SCENARIOS: list[Scenario] = [  # name, key limits, bursts (size, body), measured quantity, limit
    ("rpm 10, 40 at once", {"rpm": 10}, [(40, {})], "requests", 10),
    ("tpm 300, 60 at once, max_tokens 40", {"tpm": 300}, [(60, {"max_tokens": 40})], "tokens", 300),
    ("tpm 300, 60 at once, no max_tokens", {"tpm": 300}, [(60, {})], "tokens", 300),
    ("budget $0.01/day, 2 bursts of 30, no max_tokens", {"budget_day_usd": 0.01}, [(30, {}), (30, {})], "spend_usd",
     0.01),
]


def _scenario(urls: list[str], ledger_url: str, run: int, sc: Scenario, setup: str) -> dict[str, Any]:
    name, limits, bursts, measure, limit = sc
    key_id = f"k{run}-{SCENARIOS.index(sc)}-{len(urls)}-{setup.split()[-1]}"
    made = httpx.post(urls[0] + "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"},
                      json={"id": key_id, **limits}, timeout=10)
    made.raise_for_status()
    time.sleep(3 * SYNC_MS / 1000)  # every replica has loaded the key
    admitted = 0
    for size, body in bursts:
        admitted += _fire(urls, made.json()["key"], size, body)
    ok, tokens, spend = _ledger(ledger_url, key_id, sum(size for size, _ in bursts))
    used = {"requests": ok, "tokens": tokens, "spend_usd": spend}[measure]
    return {"scenario": name, "setup": setup, "replicas": len(urls), "run": run, "sent": sum(s for s, _ in bursts),
            "admitted": admitted, "measure": measure, "limit": limit, "used": used,
            "overshoot": used / limit - 1}


def _wait_minute(margin_s: float = 25) -> None:
    """rpm and tpm count per UTC minute: start a scenario with room left in the minute."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.1)


def _setup(n: int, replay_url: str, ledger_url: str, tmp: Path, strict: bool) -> Callable[[], list[Any]]:
    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import config_from_dict
    from thalamus.gateway.replay.threaded import ThreadedServer

    servers = [ThreadedServer(create_app(config_from_dict(_config(replay_url, ledger_url, tmp / f"j{i}.jsonl",
                                                                  strict)))).start() for i in range(n)]
    return lambda: servers


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pgserver import PgServer, new_database, pg_bindir

    from thalamus.datasets.registry import load_dataset
    from thalamus.gateway.replay.server import create_replay_app
    from thalamus.gateway.replay.threaded import ThreadedServer

    tmp = Path(tempfile.mkdtemp(prefix="thalamus-limits-"))
    bindir = pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    pg = PgServer(bindir)
    pg.start()
    results: list[dict[str, Any]] = []
    dataset = load_dataset("routerbench_subset")
    try:
        with ThreadedServer(create_replay_app(dataset, delay_ms=1000), log_level="critical") as replay:
            setups = [("1 gateway, SQLite", 1, f"sqlite:///{tmp / 'one.sqlite'}", False),
                      ("2 gateways, one PostgreSQL, sync", 2, new_database(pg.url), False),
                      ("2 gateways, one PostgreSQL, strict", 2, new_database(pg.url), True)]
            for setup, replicas, ledger_url, strict in setups:
                servers = _setup(replicas, replay.url, ledger_url, tmp, strict)()
                try:
                    for r in range(args.runs):
                        for sc in SCENARIOS:
                            _wait_minute()
                            results.append(_scenario([s.url for s in servers], ledger_url, r, sc, setup))
                            print(results[-1], flush=True)
                finally:
                    for s in servers:
                        s.stop()
    finally:
        pg.stop()
        pg.cleanup()
    return {"results": results, "meta": {"runs": args.runs, "sync_ms": SYNC_MS, "cpus": os.cpu_count(),
                                         "load_average": load_average(), "upstream_delay_ms": 1000,
                                         "command": "PYTHONPATH=$PWD .venv/bin/python " + " ".join(sys.argv)}}


def report(r: dict[str, Any]) -> str:
    meta = r["meta"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"# Limits under bursts: measured overshoot ({stamp})", "",
             f"Command: `{meta['command']}`; {meta['runs']} runs; upstream answers after "
             f"{meta['upstream_delay_ms']} ms (every request of a burst in flight at once); auth.sync_ms "
             f"{meta['sync_ms']}; {meta['cpus']} CPU cores shared with other jobs (load average at the end: "
             f"{meta['load_average']}).", "",
             "| set-up | scenario | sent | admitted (min-max) | used / limit (max) | worst overshoot |",
             "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in r["results"]:
        groups.setdefault((row["setup"], row["scenario"]), []).append(row)
    for (setup, name), rows in groups.items():
        worst = max(rows, key=lambda x: x["overshoot"])
        used = f"{worst['used']:.5f} / {worst['limit']}" if worst["measure"] == "spend_usd" else \
            f"{worst['used']} / {worst['limit']:g}"
        lines.append(f"| {setup} | {name} | {rows[0]['sent']} | {min(x['admitted'] for x in rows)}-"
                     f"{max(x['admitted'] for x in rows)} | {used} | {worst['overshoot']:+.1%} |")
    lines += ["", "Before (issue 22, fc1f392): 60 of 60 admitted under tpm 300 (3,840 tokens, +1,180%); a "
              "$0.01/day key ended at $0.01116 (+11.6%) without max_tokens."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "limits_burst")
    args = parser.parse_args()
    results = run(args)
    write(args.out, results, report(results))


if __name__ == "__main__":
    main()
