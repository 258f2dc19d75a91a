"""Settings of pool-aware routing (``pool_routing:`` in the gateway config; gateway/learning/pool_aware.py).

A local model server holds only the models that fit its memory budget; a request for one that is not
resident waits for a load (and the eviction of others). With ``enabled``, the gateway polls the servers
behind its backends and charges a routed candidate that is not resident ``per_second`` utility points per
expected second of loading, so when two models' predicted qualities are close the one already in memory
wins, while a quality gap larger than the penalty still goes to the better model. With ``load_aware``, a
candidate is also charged the expected wait behind the requests its engine is running and queueing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PoolRoutingConfig(BaseModel):
    """``pool_routing:`` of the gateway config; off unless ``enabled``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # utility points per expected second of loading: the router's utility is quality-based (a quality in
    # [0, 1] under a wtp knob, (1 - lambda) * quality under lambda), so 0.05 means a 2-second load must be
    # beaten by about 0.1 of predicted quality
    per_second: float = Field(default=0.05, ge=0)
    estimate: Literal["mean", "last"] = "mean"  # which measured load time the server reports is expected
    default_load_s: float = Field(default=1.0, ge=0)  # a model the server has never loaded yet
    poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    poll_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # backends to track (their api_base is polled at {api_base}/models); None: every backend with an
    # api_base whose server reports residency (a server that does not, such as a hosted API, is ignored)
    backends: list[str] | None = None
    # load-aware routing: also poll {server}/metrics (vLLM's or serve-local's request gauges) and charge
    # every candidate its expected wait, (running + waiting) x service_s seconds, at the same per_second
    load_aware: bool = False
    service_s: float = Field(default=1.0, gt=0)  # seconds one queued request holds the engine (default)
    service_s_by_backend: dict[str, float] = Field(default_factory=dict)  # measured per backend, overrides
