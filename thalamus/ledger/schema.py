"""The ledger's schema: the live tables queries use, and the frozen DDL that migrations run.

The ``sa.Table`` objects describe the newest schema; they are used for queries and for
``LedgerRow.storable()``'s column limits. Migrations never use them: each version is plain SQL
text per dialect, frozen when it was released, so a later change to a table cannot change what an
old migration does. ``migrate`` is safe when several gateways open an empty database at once: on
PostgreSQL the whole migration runs under one transaction-scoped advisory lock, on SQLite under
``BEGIN IMMEDIATE`` (the database's single write lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from thalamus.ledger.rollup import ROLLUP_V5

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

requests = sa.Table(
    "requests", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("api_key_id", sa.String(128)),
    sa.Column("requested_model", sa.String(256)),
    sa.Column("router", sa.String(128)),
    sa.Column("artifact_version", sa.String(64)),
    sa.Column("knob", sa.Text),            # JSON
    sa.Column("candidates", sa.Text),      # JSON {model: {"quality": q, "cost": c}}
    sa.Column("chosen_model", sa.String(256)),
    sa.Column("probability", sa.Float),
    sa.Column("fallback_chain", sa.Text),  # JSON [{"model", "attempt", "status", "error"}]
    sa.Column("status", sa.Integer),
    sa.Column("error_type", sa.String(128)),
    sa.Column("stream", sa.Boolean),
    sa.Column("routing_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("total_ms", sa.Float),
    sa.Column("prompt_tokens", sa.BigInteger),      # BIGINT since migration 3
    sa.Column("completion_tokens", sa.BigInteger),
    sa.Column("cost_usd", sa.Float),
    sa.Column("cost_estimated", sa.Boolean),
    sa.Column("prompt_hash", sa.String(64)),
    sa.Column("prompt_text", sa.Text),
    # migration 4: what the dashboards aggregate without parsing JSON (portable SQL)
    sa.Column("baseline_model", sa.String(256)),
    sa.Column("baseline_cost_usd", sa.Float),
    sa.Column("predicted_quality", sa.Float),
    sa.Column("upstream_ms", sa.Float),
    # migration 6: learning loop (docs/learning.md): every model's propensity lives in ``candidates``
    sa.Column("embedding", sa.Text),        # base64 of the routing embedding as little-endian float16
    sa.Column("embedder_id", sa.String(128)),
    sa.Column("rollout", sa.String(16)),          # serving | canary: which artifact decided (learning/rollout.py)
    sa.Column("shadow_model", sa.String(256)),    # a shadow candidate's choice, logged, not used
    sa.Column("shadow_version", sa.String(64)),
    sa.Column("cache", sa.String(16)),  # migration 7: "hit" when the response cache answered
    sa.Column("switch_cost", sa.Text),  # migration 9: JSON, pool-aware routing's penalties (pool_aware.py)
    # migration 10: the prices the one price rule used for cost_usd (and the baseline), USD per 1M tokens
    sa.Column("price_input_per_m", sa.Float),
    sa.Column("price_output_per_m", sa.Float),
    # migration 12: conversation affinity (gateway/core/affinity.py): the conversation's keyed id, the turn's
    # outcome (new | kept | switched) and why (same | margin | state | gain | unavailable | failed)
    sa.Column("session_id", sa.String(64)),
    sa.Column("affinity", sa.String(16)),
    sa.Column("affinity_reason", sa.String(32)),
    sa.Column("variant", sa.String(64)),  # the backend variant that answered (BACKEND@VARIANT), when one did
    sa.Column("guard", sa.Text),  # JSON {"ms", "findings": [{"check", "action", "rules", "n"}]} (core/guard.py)
    sa.Column("policy", sa.String(128)),  # the named route that matched (gateway/learning/policies.py)
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("label", sa.String(32)),
    sa.Column("source", sa.String(128)),
    sa.Column("comment", sa.Text),
    sa.Column("api_key_id", sa.String(128)),  # the key that posted it (migration 3)
)

# migration 7: virtual keys (hashed secrets, scopes, limits) and their usage counters (docs/gateway.md,
# "Virtual keys"): the counters every replica adds to and reads, so limits hold across replicas
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex of the secret
    sa.Column("key_prefix", sa.String(16)),  # the secret's first characters, to tell keys apart in listings
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("models", sa.Text),   # JSON list of backend names, NULL: any
    sa.Column("routers", sa.Text),  # JSON list of router names, NULL: any
    sa.Column("budget_day_usd", sa.Float),
    sa.Column("budget_month_usd", sa.Float),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.BigInteger),
    sa.Column("team", sa.String(128)),
    sa.Column("owner", sa.String(128)),
    sa.Column("metadata", sa.Text),  # JSON object
    # migration 11: roles, expiry and rotation (docs/gateway.md, "Roles", "Key rotation")
    sa.Column("role", sa.String(16)),  # key | team_admin; NULL: key
    sa.Column("expires_at", sa.Float),  # epoch seconds; NULL: never
    sa.Column("prev_key_hash", sa.String(64)),  # the secret before the last rotation, valid until prev_expires_at
    sa.Column("prev_expires_at", sa.Float),
)

# migration 11: teams as records, with budgets and rate limits over all their keys (counted in key_usage
# under the id "@team:<name>", which no key id can take)
teams = sa.Table(
    "teams", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("budget_day_usd", sa.Float),
    sa.Column("budget_month_usd", sa.Float),
    sa.Column("rpm", sa.Integer),
    sa.Column("tpm", sa.BigInteger),
    sa.Column("metadata", sa.Text),  # JSON object
)

profile_stats = sa.Table(
    "profile_stats", metadata,
    sa.Column("router", sa.String(256), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("grp", sa.Integer, primary_key=True),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("total", sa.Float, nullable=False),
    sa.Column("cost_weight", sa.Float, nullable=False),
    sa.Column("cost_total", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

key_usage = sa.Table(
    "key_usage", metadata,
    sa.Column("key_id", sa.String(128), primary_key=True),
    sa.Column("period", sa.String(32), primary_key=True),  # min:<epoch minute>, day:YYYY-MM-DD, month:YYYY-MM (UTC)
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("spend_usd", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# migration 8: every call of the LLM judge (gateway/learning/judge.py), failed ones too: what judging costs
judge_calls = sa.Table(
    "judge_calls", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), sa.ForeignKey("requests.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("judge", sa.String(256), nullable=False),    # the judge backend's name
    sa.Column("outcome", sa.String(16), nullable=False),   # scored | unparseable | failed | timeout
    sa.Column("score", sa.Float),                          # normalised to [0, 1], when scored
    sa.Column("feedback_id", sa.Integer),                  # the feedback row it wrote, when scored
    sa.Column("prompt_tokens", sa.BigInteger),
    sa.Column("completion_tokens", sa.BigInteger),
    sa.Column("cost_usd", sa.Float),
    sa.Column("latency_ms", sa.Float),
    sa.Column("error", sa.String(128)),
)

# migration 12: the model that answered each conversation's latest turn, shared by replicas (learning/sessions.py);
# ``session_key`` is the keyed hash the next turn looks up, ``conversation`` the id every turn's row records
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("session_key", sa.String(64), primary_key=True),
    sa.Column("conversation", sa.String(64), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("family", sa.String(128), nullable=False),
    sa.Column("turn", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

REQUEST_COLUMNS = [c.name for c in requests.columns]

# -- frozen DDL: never edit a released version; add a new one -------------------------------
_SCHEMA_VERSION_DDL = ("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, "
                       "applied_at FLOAT NOT NULL, PRIMARY KEY (version))")

_REQUESTS_V1 = """CREATE TABLE requests (
    id VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, finished_at FLOAT, api_key_id VARCHAR(128),
    requested_model VARCHAR(256), router VARCHAR(128), artifact_version VARCHAR(64), knob TEXT,
    candidates TEXT, chosen_model VARCHAR(256), probability FLOAT, fallback_chain TEXT, status INTEGER,
    error_type VARCHAR(128), stream BOOLEAN, routing_ms FLOAT, ttft_ms FLOAT, total_ms FLOAT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd FLOAT, cost_estimated BOOLEAN,
    prompt_hash VARCHAR(64), prompt_text TEXT, PRIMARY KEY (id))"""

_FEEDBACK_V1 = """CREATE TABLE feedback (
    id {pk} NOT NULL, request_id VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, score FLOAT NOT NULL,
    label VARCHAR(32), source VARCHAR(128), comment TEXT, PRIMARY KEY (id),
    FOREIGN KEY(request_id) REFERENCES requests (id))"""

_INDEXES_V2 = ("CREATE INDEX ix_requests_created_at ON requests (created_at)",
               "CREATE INDEX ix_feedback_request_id ON feedback (request_id)")

_DASHBOARD_V4 = ("ALTER TABLE requests ADD COLUMN baseline_model VARCHAR(256)",
                 "ALTER TABLE requests ADD COLUMN baseline_cost_usd FLOAT",
                 "ALTER TABLE requests ADD COLUMN predicted_quality FLOAT",
                 "ALTER TABLE requests ADD COLUMN upstream_ms FLOAT")

_LEARNING_V6 = ("ALTER TABLE requests ADD COLUMN embedding TEXT",
                "ALTER TABLE requests ADD COLUMN embedder_id VARCHAR(128)",
                "ALTER TABLE requests ADD COLUMN rollout VARCHAR(16)",
                "ALTER TABLE requests ADD COLUMN shadow_model VARCHAR(256)",
                "ALTER TABLE requests ADD COLUMN shadow_version VARCHAR(64)")

_API_KEYS_V7 = """CREATE TABLE api_keys (
    id VARCHAR(128) NOT NULL, key_hash VARCHAR(64) NOT NULL, key_prefix VARCHAR(16), created_at FLOAT NOT NULL,
    revoked_at FLOAT, models TEXT, routers TEXT, budget_day_usd FLOAT, budget_month_usd FLOAT, rpm INTEGER,
    tpm BIGINT, team VARCHAR(128), owner VARCHAR(128), metadata TEXT, PRIMARY KEY (id), UNIQUE (key_hash))"""

_KEY_USAGE_V7 = """CREATE TABLE key_usage (
    key_id VARCHAR(128) NOT NULL, period VARCHAR(32) NOT NULL, requests BIGINT NOT NULL, tokens BIGINT NOT NULL,
    spend_usd FLOAT NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (key_id, period))"""

_KEYS_V7 = (_API_KEYS_V7, _KEY_USAGE_V7,
            "CREATE INDEX ix_requests_key_created ON requests (api_key_id, created_at)",
            "ALTER TABLE requests ADD COLUMN cache VARCHAR(16)")

_POOL_V9 = ("ALTER TABLE requests ADD COLUMN switch_cost TEXT",)
_TEAMS_V11 = ("ALTER TABLE api_keys ADD COLUMN role VARCHAR(16)",
              "ALTER TABLE api_keys ADD COLUMN expires_at FLOAT",
              "ALTER TABLE api_keys ADD COLUMN prev_key_hash VARCHAR(64)",
              "ALTER TABLE api_keys ADD COLUMN prev_expires_at FLOAT",
              "CREATE INDEX ix_api_keys_team ON api_keys (team)",
              "CREATE TABLE teams (id VARCHAR(128) NOT NULL, created_at FLOAT NOT NULL, budget_day_usd FLOAT, "
              "budget_month_usd FLOAT, rpm INTEGER, tpm BIGINT, metadata TEXT, PRIMARY KEY (id))")
_PRICES_V10 = ("ALTER TABLE requests ADD COLUMN price_input_per_m FLOAT",
               "ALTER TABLE requests ADD COLUMN price_output_per_m FLOAT")

_SESSIONS_V12 = ("ALTER TABLE requests ADD COLUMN session_id VARCHAR(64)",
                 "ALTER TABLE requests ADD COLUMN affinity VARCHAR(16)",
                 "ALTER TABLE requests ADD COLUMN affinity_reason VARCHAR(32)",
                 "ALTER TABLE requests ADD COLUMN variant VARCHAR(64)",
                 "ALTER TABLE requests ADD COLUMN guard TEXT",
                 "ALTER TABLE requests ADD COLUMN policy VARCHAR(128)",
                 """CREATE TABLE sessions (
    session_key VARCHAR(64) NOT NULL, conversation VARCHAR(64) NOT NULL, model VARCHAR(256) NOT NULL,
    family VARCHAR(128) NOT NULL, turn INTEGER NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (session_key))""",
                 "CREATE INDEX ix_sessions_updated_at ON sessions (updated_at)")

# online profile statistics of profile routers (gateway/learning/profile_store.py): per router (name@version),
# model and group, the feedback weight and score sum, the costed calls' weight and USD sum (grp -1: the model's
# overall residual count and sum)
_PROFILE_STATS_V13 = ("""CREATE TABLE profile_stats (
    router VARCHAR(256) NOT NULL, model VARCHAR(256) NOT NULL, grp INTEGER NOT NULL, weight FLOAT NOT NULL,
    total FLOAT NOT NULL, cost_weight FLOAT NOT NULL, cost_total FLOAT NOT NULL, updated_at FLOAT NOT NULL,
    PRIMARY KEY (router, model, grp))""",)

_JUDGE_CALLS_V8 = """CREATE TABLE judge_calls (
    id {pk} NOT NULL, request_id VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, judge VARCHAR(256) NOT NULL,
    outcome VARCHAR(16) NOT NULL, score FLOAT, feedback_id INTEGER, prompt_tokens BIGINT, completion_tokens BIGINT,
    cost_usd FLOAT, latency_ms FLOAT, error VARCHAR(128), PRIMARY KEY (id),
    FOREIGN KEY(request_id) REFERENCES requests (id))"""
_JUDGE_INDEX_V8 = "CREATE INDEX ix_judge_calls_request_id ON judge_calls (request_id)"


@dataclass(frozen=True)
class Migration:
    """One schema version: its statements for each dialect (``sqlite``, ``postgresql``)."""

    number: int
    name: str
    sql: dict[str, tuple[str, ...]]

    def apply(self, conn: Connection) -> None:
        dialect = conn.dialect.name
        if dialect not in self.sql:
            raise RuntimeError(f"ledger migration {self.number} ({self.name}) has no DDL for {dialect!r}; "
                               "the ledger supports sqlite and postgresql URLs")
        for statement in self.sql[dialect]:
            conn.exec_driver_sql(statement)


MIGRATIONS: list[Migration] = [
    Migration(1, "initial", {
        "sqlite": (_REQUESTS_V1, _FEEDBACK_V1.format(pk="INTEGER")),
        "postgresql": (_REQUESTS_V1, _FEEDBACK_V1.format(pk="SERIAL")),
    }),
    Migration(2, "indexes", {"sqlite": _INDEXES_V2, "postgresql": _INDEXES_V2}),
    Migration(3, "feedback key id, wide token counts", {
        # SQLite's INTEGER is already 64-bit: only the new column
        "sqlite": ("ALTER TABLE feedback ADD COLUMN api_key_id VARCHAR(128)",),
        "postgresql": ("ALTER TABLE feedback ADD COLUMN api_key_id VARCHAR(128)",
                       "ALTER TABLE requests ALTER COLUMN prompt_tokens TYPE BIGINT, "
                       "ALTER COLUMN completion_tokens TYPE BIGINT"),
    }),
    Migration(4, "dashboard columns", {"sqlite": _DASHBOARD_V4, "postgresql": _DASHBOARD_V4}),
    Migration(5, "hourly rollups kept by triggers", ROLLUP_V5),  # DDL in ledger_rollup, pinned by a test
    Migration(6, "learning loop: routing embedding, rollout",
              {"sqlite": _LEARNING_V6, "postgresql": _LEARNING_V6}),
    Migration(7, "virtual keys, usage counters, cache column", {"sqlite": _KEYS_V7, "postgresql": _KEYS_V7}),
    Migration(8, "LLM judge calls", {
        "sqlite": (_JUDGE_CALLS_V8.format(pk="INTEGER"), _JUDGE_INDEX_V8),
        "postgresql": (_JUDGE_CALLS_V8.format(pk="SERIAL"), _JUDGE_INDEX_V8),
    }),
    Migration(9, "pool-aware routing: switch_cost", {"sqlite": _POOL_V9, "postgresql": _POOL_V9}),
    Migration(10, "the prices a row was costed at", {"sqlite": _PRICES_V10, "postgresql": _PRICES_V10}),
    Migration(11, "key roles, expiry, rotation; teams", {"sqlite": _TEAMS_V11, "postgresql": _TEAMS_V11}),
    Migration(12, "affinity sessions; variant, guard, policy columns",
              {"sqlite": _SESSIONS_V12, "postgresql": _SESSIONS_V12}),
    Migration(13, "online profile statistics", {"sqlite": _PROFILE_STATS_V13, "postgresql": _PROFILE_STATS_V13}),
]

_PG_LOCK_KEY = 0x7448_616C_616D_7573 & 0x7FFF_FFFF_FFFF_FFFF  # "tHalamus": one lock id for every gateway


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def _apply_pending(conn: Connection, upto: int | None = None) -> int:
    conn.exec_driver_sql(_SCHEMA_VERSION_DDL)
    current = current_version(conn)
    for migration in MIGRATIONS[current:upto]:
        migration.apply(conn)
        conn.execute(schema_version.insert().values(version=migration.number, applied_at=time.time()))
    return current_version(conn)


def _migrate_sqlite(engine: Engine, upto: int | None) -> int:
    # pysqlite's own transaction handling does not wrap DDL: drive BEGIN IMMEDIATE ourselves
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            version = _apply_pending(conn, upto)
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
        return version


def migrate(engine: Engine, upto: int | None = None) -> int:
    """Apply the migrations not yet recorded (up to version ``upto``, default all), under one lock;
    returns the schema version."""
    if engine.dialect.name == "sqlite":
        return _migrate_sqlite(engine, upto)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        return _apply_pending(conn, upto)
