"""The gateway's YAML configuration, validated by pydantic; every error names the key at fault.

A config lists backends (what can be called and what it costs), routers (artifact dirs,
default knobs, aliases), the fallback policy, the ledger, auth and server limits. Backend
fields left out are filled from ``thalamus.catalog`` when the backend name is catalogued.
``load_config`` turns pydantic's errors into one ConfigError such as
``thalamus.yaml: backends[2].timeout: Input should be a valid number``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thalamus.catalog import lookup, lookup_model, price_help
from thalamus.errors import ConfigError
from thalamus.gateway.config.affinity import AffinityConfig
from thalamus.gateway.config.guard import GuardConfig
from thalamus.gateway.config.judge import JudgeConfig
from thalamus.gateway.config.pool import PoolRoutingConfig
from thalamus.gateway.config.strict_yaml import DuplicateKeyError, load_yaml
from thalamus.router.policy import Knob


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentConfig(_Strict):
    """One of several places serving a backend (gateway/upstream/deployments.py); unset fields come from the backend."""

    api_base: str | None = None
    model: str | None = None
    provider: Literal["litellm", "openai-compatible"] | None = None
    api_key_env: str | None = None
    weight: float = Field(default=1.0, gt=0)


class VariantConfig(_Strict):
    """One way of calling a backend (docs/conversations.md, "Variants"): default body parameters (such as
    ``reasoning_effort: high`` or ``max_tokens``), a default system prompt, and its own prices. The gateway
    serves it as the backend ``NAME@VARIANT``, a candidate like any other: routers and onboarding give it
    its own quality, cost and latency profile, and the ledger row names it. Unset prices: the backend's."""

    params: dict[str, Any] = Field(default_factory=dict)
    system: str | None = None
    input_per_m: float | None = Field(default=None, ge=0)
    output_per_m: float | None = Field(default=None, ge=0)


class PriorConfig(_Strict):
    """Where a router that was not trained on a backend starts its profile (router/profiles.py): like a model
    the router knows (``like: MODEL``) or at a tier of the known models (``tier: top|high|mid|low|bottom``
    or a quantile in [0, 1]); neither: the known models' pooled mean, with wide uncertainty."""

    like: str | None = None
    tier: str | None = None  # a name, or a quantile: YAML's unquoted 0.9 is a number, taken as "0.9"

    @field_validator("tier", mode="before")
    @classmethod
    def _quantile(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one(self) -> PriorConfig:
        if self.like is not None and self.tier is not None:
            raise ValueError("set 'like' or 'tier', not both")
        return self

    def spec(self) -> str | None:
        """The prior as ``ClusterRouter.add_model`` takes it: ``like:MODEL``, ``tier:NAME`` or None (pooled)."""
        if self.like is not None:
            return f"like:{self.like}"
        return f"tier:{self.tier}" if self.tier is not None else None


class BackendConfig(_Strict):
    """One callable model. ``model`` is a litellm model id (``openai/<name>`` + ``api_base`` for
    any OpenAI-compatible server); ``api_key_env`` names the environment variable holding the key.
    ``provider: openai-compatible`` skips litellm and relays the body directly to ``api_base``."""

    name: str = Field(min_length=1)
    provider: Literal["litellm", "openai-compatible"] = "litellm"
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    input_per_m: float | None = Field(default=None, ge=0)
    output_per_m: float | None = Field(default=None, ge=0)
    # timeouts per attempt, none of them a total: a healthy stream runs as long as it keeps sending.
    # ``timeout`` is the default of first_byte_timeout and idle_timeout (and caps the default connect
    # timeout), so configs written when it was a total keep their meaning for a hung upstream.
    timeout: float = Field(default=60.0, gt=0)
    connect_timeout: float | None = Field(default=None, gt=0)  # None: min(10 s, timeout)
    first_byte_timeout: float | None = Field(default=None, gt=0)  # None: timeout
    idle_timeout: float | None = Field(default=None, gt=0)  # None: timeout
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # one SSE line or non-stream body
    max_retries: int = Field(default=2, ge=0, le=10)
    context_window: int | None = Field(default=None, gt=0)
    # the upstream speaks POST /responses itself (openai-compatible only): Responses requests are forwarded
    # as they are, not translated to chat completions
    responses: bool = False
    # several deployments behind this name: balanced least in-flight (weighted); one that fails
    # ``cooldown_failures`` times in a row, or answers with Retry-After, rests for ``cooldown_s`` (capped
    # ``max_cooldown_s``) and is tried again after
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    cooldown_failures: int = Field(default=3, ge=1)
    cooldown_s: float = Field(default=30.0, ge=0)
    max_cooldown_s: float = Field(default=300.0, ge=0)
    # the provider family whose conversation state (thinking signatures, reasoning items) this backend
    # reads; None: the litellm model id's provider prefix ("anthropic/..." -> anthropic, else "openai")
    family: str | None = None
    # default body parameters and system prompt (a request's own fields win); ``variants`` become the
    # backends NAME@VARIANT (GatewayConfig expands them; ``variant`` names the one a backend is)
    params: dict[str, Any] = Field(default_factory=dict)
    system: str | None = None
    variants: dict[str, VariantConfig] = Field(default_factory=dict)
    variant: str | None = None
    # the profile a router not trained on this backend gives it at start (docs/own-models.md)
    prior: PriorConfig | None = None
    # false: a router not trained on this backend never routes to it (a fallback- or passthrough-only model);
    # a router trained on it still does. The judge backend is never taken on.
    adopt: bool = True

    @model_validator(mode="after")
    def _fill_from_catalog(self) -> BackendConfig:
        entry = lookup(self.name) or lookup_model(self.model)
        if entry is not None:
            self.model = self.model or entry.litellm_model
            self.api_key_env = self.api_key_env or (None if self.api_base else entry.api_key_env)
            self.input_per_m = entry.price.input_per_m if self.input_per_m is None else self.input_per_m
            self.output_per_m = entry.price.output_per_m if self.output_per_m is None else self.output_per_m
            self.context_window = self.context_window or entry.context_window
        if self.model is None:
            raise ValueError(f"backend {self.name!r} is not in the catalog: set its litellm 'model' id")
        if self.provider == "openai-compatible" and not self.api_base and not self.deployments:
            raise ValueError(f"backend {self.name!r}: provider 'openai-compatible' needs 'api_base'")
        for i, dep in enumerate(self.deployments):
            if (dep.provider or self.provider) == "openai-compatible" and not (dep.api_base or self.api_base):
                raise ValueError(f"backend {self.name!r}: deployments[{i}] is openai-compatible and needs 'api_base'")
        if self.responses and self.provider != "openai-compatible":
            raise ValueError(f"backend {self.name!r}: 'responses: true' needs provider 'openai-compatible' "
                             "(litellm backends get Responses requests translated to chat)")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def expand(self) -> list[BackendConfig]:
        """This backend, then one backend per variant, named ``NAME@VARIANT``."""
        out = [self]
        for name, v in self.variants.items():
            if not name or "@" in name:
                raise ValueError(f"backend {self.name!r}: variant name {name!r} must be non-empty, without '@'")
            out.append(self.model_copy(update={
                "name": f"{self.name}@{name}", "variants": {}, "variant": name, "params": self.params | v.params,
                "system": v.system if v.system is not None else self.system,
                "input_per_m": v.input_per_m if v.input_per_m is not None else self.input_per_m,
                "output_per_m": v.output_per_m if v.output_per_m is not None else self.output_per_m}))
        return out

    def with_defaults(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with this backend's default parameters and system prompt where the request set none."""
        if not self.params and self.system is None:
            return body
        out = self.params | body
        if self.system is not None:
            messages = out.get("messages")
            if isinstance(messages, list) and not any(
                    isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
                out["messages"] = [{"role": "system", "content": self.system}, *messages]
            elif "input" in out and "messages" not in out and out.get("instructions") is None:
                out["instructions"] = self.system  # a Responses body for a backend that speaks it
        return out

    @property
    def provider_family(self) -> str:
        """Backends of one family can continue each other's conversations with provider state."""
        if self.family:
            return self.family
        model = self.model or ""
        return model.split("/", 1)[0] if "/" in model else "openai"

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for this many tokens at this backend's prices: the one price rule (reservations, accounting,
        passthrough, the judge and the counterfactual baseline all call it). Unknown prices count as 0."""
        return (prompt_tokens * (self.input_per_m or 0.0) + completion_tokens * (self.output_per_m or 0.0)) / 1e6

    @property
    def connect_s(self) -> float:
        """Seconds to open the connection (TCP and TLS)."""
        return self.connect_timeout if self.connect_timeout is not None else min(10.0, self.timeout)

    @property
    def first_byte_s(self) -> float:
        """Seconds from sending the request to the answer's start: a stream's first chunk, or the
        headers of a non-stream answer (litellm: the whole non-stream answer)."""
        return self.first_byte_timeout if self.first_byte_timeout is not None else self.timeout

    @property
    def idle_s(self) -> float:
        """Longest silence inside an answer: between two stream chunks, or two reads of a body."""
        return self.idle_timeout if self.idle_timeout is not None else self.timeout


class KnobConfig(_Strict):
    """A router's default knob; per-request ``routing`` fields override it."""

    kind: Literal["wtp", "lambda", "threshold"] = "lambda"
    value: float = 0.5
    strong: str | None = None
    max_cost: float | None = Field(default=None, ge=0)
    allowed: list[str] | None = None
    excluded: list[str] = Field(default_factory=list)

    def to_knob(self) -> Knob:
        return Knob(kind=self.kind, value=self.value, strong=self.strong, max_cost=self.max_cost,
                    allowed=tuple(self.allowed) if self.allowed is not None else None,
                    excluded=tuple(self.excluded))


class ExploreConfig(_Strict):
    """Exploration for off-policy learning (docs/learning.md): ``epsilon`` (share of requests sent to a
    uniformly drawn eligible model), ``softmax`` (temperature in utility units) or ``thompson`` (a draw
    from a profile router's posterior: each model is chosen with its chance of being best; ``value``
    scales the posterior's standard deviations, 1 = as estimated). ``seed`` for replays."""

    kind: Literal["epsilon", "softmax", "thompson"]
    value: float = Field(ge=0)  # thompson's default (1.0) is filled in by _value
    seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _value(cls, data: Any) -> Any:
        """``thompson`` defaults to the posterior as estimated (1.0); ``epsilon`` and ``softmax`` have no
        safe default (1.0 would send every request to a random model), so they name their value."""
        if isinstance(data, dict) and data.get("value") is None:
            if data.get("kind") == "thompson":
                return {**data, "value": 1.0}
            if data.get("kind") in ("epsilon", "softmax"):
                raise ValueError(f"explore kind {data['kind']!r} needs a 'value' (epsilon: the share of "
                                 "requests explored, e.g. 0.1; softmax: a temperature, e.g. 0.05)")
        return data


class ControllerConfig(_Strict):
    """Hold a target by moving the router's lambda knob (gateway/learning/controller.py, docs/learning.md)."""

    target: Literal["strong_share", "spend_per_hour", "quality_floor"]
    value: float = Field(ge=0)
    strong: str | None = None  # the model counted by strong_share
    window: int = Field(default=200, ge=10)  # the last N answered requests of the router
    min_rows: int = Field(default=50, ge=1)
    interval_s: float = Field(default=10.0, gt=0)
    max_step: float = Field(default=0.05, gt=0, le=1)
    gain: float = Field(default=0.5, gt=0)  # quality_floor: lambda change per unit of score shortfall

    @model_validator(mode="after")
    def _strong(self) -> ControllerConfig:
        if self.target == "strong_share" and (self.strong is None or self.value > 1):
            raise ValueError("target strong_share needs 'strong' (a model) and a value in [0, 1]")
        return self


class PolicyConfig(_Strict):
    """A named route (gateway/learning/policies.py): prompts like ``description`` (and ``examples``) may be
    answered only by ``models``; ``threshold`` (cosine similarity) overrides the calibrated one."""

    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    models: list[str] = Field(min_length=1)
    threshold: float | None = Field(default=None, ge=-1, le=1)


class RouterConfig(_Strict):
    """A trained router artifact. ``strong``/``weak`` enable RouteLLM's ``router-NAME-THRESHOLD`` names.
    ``baseline`` is the model the dashboard's counterfactual spend is priced on (default: ``strong``).
    ``explore`` is off by default. ``learn_online``: a router with ``partial_fit`` (linucb, thompson)
    learns from feedback in the gateway and checkpoints every ``checkpoint_every`` updates."""

    artifact: Path
    knob: KnobConfig = Field(default_factory=KnobConfig)
    aliases: list[str] = Field(default_factory=list)
    strong: str | None = None
    weak: str | None = None
    baseline: str | None = None
    explore: ExploreConfig | None = None
    learn_online: bool = True
    checkpoint_every: int = Field(default=50, ge=1)
    controller: ControllerConfig | None = None
    switch_margin: float | None = Field(default=None, ge=0)  # conversation affinity; None: affinity.switch_margin
    policies: list[PolicyConfig] = Field(default_factory=list)  # named routes, matched before the knob decides
    policy_threshold: float = Field(default=0.2, ge=-1, le=1)  # the calibrated thresholds' floor
    policy_margin: float = Field(default=0.02, ge=0)
    # profile routers (cluster): online profile statistics are written to / read from the ledger this often
    profile_sync_ms: int = Field(default=1000, ge=10)

    def baseline_model(self) -> str | None:
        return self.baseline or self.strong

    @model_validator(mode="after")
    def _pair(self) -> RouterConfig:
        if (self.strong is None) != (self.weak is None):
            raise ValueError("set both 'strong' and 'weak' (a RouteLLM two-model pair) or neither")
        return self


class FallbackConfig(_Strict):
    """``order: score`` falls back in the router's score order; ``list`` uses ``models``.
    ``models`` also follows a concrete (passthrough) backend when set."""

    order: Literal["score", "list"] = "score"
    models: list[str] = Field(default_factory=list)
    max_candidates: int = Field(default=3, ge=1)
    context_model: str | None = None
    backoff_s: float = Field(default=0.1, ge=0)
    # an upstream 429/503 asking for a longer wait than this is not retried: the next candidate is tried
    retry_after_cap_s: float = Field(default=5.0, ge=0)


class LedgerConfig(_Strict):
    """Where rows go and what a crash may cost (docs/gateway.md, "Durability contract").
    ``durability: journal`` (default) fsyncs each row to ``journal_path`` before the response ends:
    no answered request without a row after kill -9; ``batched`` may lose the last ``flush_ms`` + a batch.
    The journal also holds rows while the database is unreachable (both modes); default path: beside a
    SQLite file, else under the cache dir."""

    url: str | None = None  # None: sqlite file ledger.sqlite under Settings().cache_dir
    store_prompts: bool = False
    store_embeddings: bool = False  # the routing embedding (float16) + embedder id, for re-training
    flush_ms: int = Field(default=50, gt=0)
    batch_rows: int = Field(default=500, gt=0)
    hash_key_env: str = "THALAMUS_PROMPT_HASH_KEY"  # secret of the keyed prompt hash (ledger/prompt_hash.py)
    durability: Literal["batched", "journal"] = "journal"
    journal_path: Path | None = None
    busy_timeout_ms: int = Field(default=5000, ge=0)  # SQLite: how long a write waits for a lock


class ApiKeyConfig(_Strict):
    id: str = Field(min_length=1)
    key: str | None = None
    key_env: str | None = None
    team: str | None = None
    role: Literal["key", "team_admin"] = "key"  # team_admin: reads its team's rows and spend (docs/gateway.md)

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyConfig:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give exactly one of 'key' or 'key_env'")
        if self.role == "team_admin" and self.team is None:
            raise ValueError(f"key {self.id!r}: role team_admin needs a 'team'")
        return self

    def secret(self) -> str | None:
        return self.key if self.key is not None else os.environ.get(self.key_env or "")


class AuthConfig(_Strict):
    """Static keys from this file, plus virtual keys from the ledger database (``thalamus keys``, the admin
    API). ``admin_key_env`` (or ``admin_key`` for tests) names the admin secret: it manages virtual keys and
    reads every key's spend. Usage counters are shared through the database every ``sync_ms``."""

    enabled: bool = False
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    admin_key: str | None = None
    admin_key_env: str | None = None
    virtual_keys: bool = True  # accept keys created with ``thalamus keys create`` / POST /admin/keys
    sync_ms: int = Field(default=100, ge=1, le=60_000)  # counters and key list: database round trip period
    # completion tokens a request without max_tokens reserves until its key has answers to size it by
    reserve_completion_tokens: int = Field(default=256, ge=0)
    # limited requests claim their counts in the database at admission: exact across replicas, a round trip each
    strict_limits: bool = False

    def admin_secret(self) -> str | None:
        if self.admin_key is not None:
            return self.admin_key
        return os.environ.get(self.admin_key_env) if self.admin_key_env else None


class CorsConfig(_Strict):
    """Browser access from other origins; off (no CORS headers) unless ``allow_origins`` lists some."""

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: ["authorization", "content-type"])
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    docs: bool | None = None  # /docs, /redoc, /openapi.json; None: served only while auth is off
    # concurrent routing requests wait at most this long to share one embedding pass; 0: no batching
    embed_batch_ms: float = Field(default=2.0, ge=0, le=100)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    forward_headers: list[str] = Field(default_factory=list)  # sent on upstream (upstream/headers.py)


class AdminConfig(_Strict):
    """The admin endpoints (/admin/...: hot reload, shadow, canary, promotion, controller state).
    Off by default; when on they need ``Authorization: Bearer <key>`` with the key given here."""

    enabled: bool = False
    key: str | None = None
    key_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AdminConfig:
        if self.enabled and (self.key is None) == (self.key_env is None):
            raise ValueError("admin is enabled: give exactly one of 'key' or 'key_env'")
        return self

    def secret(self) -> str | None:
        return self.key if self.key is not None else os.environ.get(self.key_env or "") or None


class CacheConfig(_Strict):
    """The exact-match response cache (gateway/core/cache.py); off unless ``enabled``."""

    enabled: bool = False
    ttl_s: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=1000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    per_key: bool = True  # an answer cached for one API key is served to that key only


class GatewayConfig(_Strict):
    cache: CacheConfig = Field(default_factory=CacheConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: list[BackendConfig] = Field(min_length=1)
    routers: dict[str, RouterConfig] = Field(default_factory=dict)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    judge: JudgeConfig | None = None  # LLM-as-judge feedback (gateway/config/judge.py); off when absent
    pool_routing: PoolRoutingConfig = Field(default_factory=PoolRoutingConfig)  # gateway/learning/pool_aware.py
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)  # gateway/core/affinity.py
    guard: GuardConfig = Field(default_factory=GuardConfig)  # pre-routing checks (gateway/core/guard.py)

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, value: list[BackendConfig]) -> list[BackendConfig]:
        value = [one for b in value for one in (b.expand() if b.variant is None else [b])]
        names = [b.name for b in value]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate backend names {sorted(dup)}")
        return value

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        known = {b.name for b in self.backends}
        for i, name in enumerate(self.fallback.models):
            _need(name in known, f"fallback.models[{i}]", f"unknown backend {name!r}")
        if self.fallback.context_model is not None:
            _need(self.fallback.context_model in known, "fallback.context_model",
                  f"unknown backend {self.fallback.context_model!r}")
        for i, name in enumerate(self.pool_routing.backends or []):
            _need(name in known, f"pool_routing.backends[{i}]", f"unknown backend {name!r}")
        taken = set(known)
        for rname, router in self.routers.items():
            for field in ("strong", "weak", "baseline"):
                value = getattr(router, field)
                _need(value is None or value in known, f"routers.{rname}.{field}", f"unknown backend {value!r}")
            for j, name in enumerate(router.knob.allowed or []):
                _need(name in known, f"routers.{rname}.knob.allowed[{j}]", f"unknown backend {name!r}")
            for j, policy in enumerate(router.policies):
                for k, name in enumerate(policy.models):
                    _need(name in known, f"routers.{rname}.policies[{j}].models[{k}]", f"unknown backend {name!r}")
            for j, alias in enumerate(router.aliases):
                _need(alias not in taken, f"routers.{rname}.aliases[{j}]",
                      f"{alias!r} is already a backend name or another alias")
                taken.add(alias)
        for i, check in enumerate(self.guard.checks):
            for j, name in enumerate(check.models or []):
                _need(name in known, f"guard.checks[{i}].models[{j}]", f"unknown backend {name!r}")
        if self.judge is not None:
            _need(self.judge.backend in known, "judge.backend", f"unknown backend {self.judge.backend!r}")
        if self.auth.enabled:
            _need(bool(self.auth.keys) or self.auth.admin_key is not None or self.auth.admin_key_env is not None,
                  "auth.keys", "auth is enabled but neither keys nor an admin key are configured")
        for i, b in enumerate(self.backends):  # a backend without a price would look free to every router
            _need(b.input_per_m is not None and b.output_per_m is not None, f"backends[{i}]",
                  price_help(b.name, b.model))
        return self

    def backend(self, name: str) -> BackendConfig:
        return next(b for b in self.backends if b.name == name)


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_from_dict(data: Any, source: str = "config") -> GatewayConfig:
    """Validate a parsed config; raise ConfigError naming the source and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'backends' key")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = _format_loc(tuple(p for p in err["loc"] if p not in ("function-after",)))
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc + ': ' if loc else ''}{msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = load_yaml(path.read_text())
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    config = config_from_dict(data, str(path))
    for name, router in config.routers.items():
        if not router.artifact.is_absolute():
            router.artifact = (path.parent / router.artifact).resolve()
        del name
    return config
