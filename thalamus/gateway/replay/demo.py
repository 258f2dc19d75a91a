"""The main job: route held-out RouterBench prompts through a real gateway and report the savings.

``thalamus demo`` starts the replay upstream (the 11 RouterBench models answering with their
recorded responses) and the gateway on loopback, trains a router on the train split on first run
(cached under ``Settings().cache_dir/demo``; best-single if the router named is unavailable), sends
test-split prompts through the real ``openai`` SDK with ``model="auto"``, posts each request's
recorded correctness as feedback, and compares with always calling GPT-4.

The default router is the cluster router on the project's one default embedder (``DEFAULT_EMBEDDER``,
shared with ``train`` and ``eval``; docs/embedders.md says why it is MiniLM); ``--embedder static:dims=384``
routes in well under a millisecond for a measured loss of quality.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thalamus.catalog import lookup
from thalamus.config import Settings
from thalamus.datasets.schema import RoutingDataset, stable_hash
from thalamus.errors import UnknownNameError
from thalamus.router.embedder_registry import DEFAULT_EMBEDDER

log = logging.getLogger("thalamus.demo")
DATASET = "routerbench_subset"
REFERENCE = "gpt-4-1106-preview"
ROUTER, EMBEDDER = "cluster", DEFAULT_EMBEDDER  # the defaults (see the module docstring)


@dataclass
class DemoResult:
    rows: np.ndarray            # dataset row of every prompt sent
    chosen: list[str]           # backend that answered each prompt
    request_ids: list[str]
    router: str
    ledger_cost: float          # USD from usage x catalog prices, as the ledger recorded it
    ledger_rows: int
    test: RoutingDataset
    snapshot: Path | None = None  # the dashboard of this run, one self-contained HTML file

    def report(self) -> dict[str, Any]:
        """Requests, share per model, cost and accuracy vs always calling the reference (GPT-4)."""
        t, rows = self.test, self.rows
        cols = np.array([t.models.index(m) for m in self.chosen])
        ref = t.models.index(REFERENCE)
        names, counts = np.unique(self.chosen, return_counts=True)
        return {
            "requests": len(rows), "router": self.router, "ledger_rows": self.ledger_rows,
            "share": {str(n): int(c) / len(rows) for n, c in sorted(zip(names, counts, strict=True),
                                                                     key=lambda x: -x[1])},
            "accuracy": float(t.quality[rows, cols].mean()), "accuracy_gpt4": float(t.quality[rows, ref].mean()),
            "recorded_cost": float(t.cost[rows, cols].sum()), "recorded_cost_gpt4": float(t.cost[rows, ref].sum()),
            "ledger_cost": self.ledger_cost,
        }


def train_or_load(train: RoutingDataset, cache_dir: Path, router: str, embedder: str) -> tuple[Path, str]:
    """The router artifact for the demo, trained once and cached; falls back to best-single."""
    from thalamus.router.base import Router, get_router_class
    from thalamus.router.registry import make_router

    try:
        takes_embedder = "embedder" in get_router_class(router).param_names()
        model = make_router(router, embedder=embedder) if takes_embedder else make_router(router)
    except (UnknownNameError, ModuleNotFoundError) as exc:
        log.warning("router %r unavailable (%s); the demo uses best-single", router, exc)
        router, model = "best-single", make_router("best-single")
    key = stable_hash("\n".join(train.texts) + repr(model.get_params()))[:12]
    artifact = cache_dir / "demo" / f"{router}-{key}"
    if not (artifact / "router.json").exists():
        log.info("training %s on %d prompts (first run; cached in %s)", router, train.n_prompts, artifact)
        Router.save(model.fit(train), artifact)
    return artifact, router


def gateway_config(models: list[str], replay_url: str, artifact: Path, router: str, knob: dict[str, Any],
                   ledger_url: str) -> dict[str, Any]:
    backends = []
    for name in models:
        entry = lookup(name)
        price = entry.price if entry else None
        backends.append({"name": name, "model": f"openai/{name}", "api_base": replay_url + "/v1",
                         "input_per_m": price.input_per_m if price else 0.0,
                         "output_per_m": price.output_per_m if price else 0.0, "timeout": 30.0})
    return {"backends": backends,
            "routers": {router: {"artifact": str(artifact), "aliases": ["auto"], "knob": knob,
                                 "baseline": REFERENCE if REFERENCE in models else None}},
            "ledger": {"url": ledger_url, "store_prompts": True}}


async def _send(url: str, texts: list[str], concurrency: int,
                score_of: Callable[[int, str], float]) -> list[tuple[str, str]]:
    """Every prompt through the openai SDK, then the answering model's recorded correctness as feedback."""
    import httpx
    import openai

    sem = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="demo", max_retries=2) as client, \
            httpx.AsyncClient(base_url=url) as http:
        async def one(i: int, text: str) -> tuple[str, str]:
            async with sem:
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": text}])
                model, rid = raw.parse().model, raw.headers["x-thalamus-request-id"]
                fb = await http.post("/v1/feedback", json={"request_id": rid, "score": score_of(i, model),
                                                           "source": "routerbench-label"})
                fb.raise_for_status()
                return model, rid

        return list(await asyncio.gather(*[one(i, t) for i, t in enumerate(texts)]))


def _hold(gateway_url: str) -> None:
    """``thalamus demo --serve``: keep the gateway and its dashboard up until Ctrl-C."""
    import time

    log.info("gateway on %s/v1, dashboard on %s/dashboard; Ctrl-C to stop", gateway_url, gateway_url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")


def run_demo(limit: int = 200, router: str = ROUTER, embedder: str = EMBEDDER, knob: dict[str, Any] | None = None,
             concurrency: int = 8, delay_ms: float = 0.0, settings: Settings | None = None,
             serve: bool = False, snapshot: Path | None = None) -> DemoResult:
    from thalamus.datasets.registry import load_dataset
    from thalamus.gateway.app import create_app
    from thalamus.gateway.config import config_from_dict
    from thalamus.gateway.http.dashboard import write_snapshot
    from thalamus.gateway.replay.server import create_replay_app
    from thalamus.gateway.replay.threaded import ThreadedServer
    from thalamus.ledger import Ledger

    settings = settings or Settings()
    dataset = load_dataset(DATASET)
    train, test = dataset.train_test(seed=settings.seed)
    artifact, router = train_or_load(train, settings.cache_dir, router, embedder)
    rows = np.sort(np.random.default_rng(settings.seed).permutation(test.n_prompts)[:limit])
    texts = [test.texts[i] for i in rows]
    ledger_url = f"sqlite:///{settings.cache_dir / 'demo' / 'ledger.sqlite'}"

    def score_of(i: int, model: str) -> float:
        return float(test.quality[rows[i], test.models.index(model)])

    with ThreadedServer(create_replay_app(dataset, delay_ms=delay_ms), log_level="error") as replay:
        config = config_from_dict(gateway_config(dataset.models, replay.url, artifact, router,
                                                 knob or {"kind": "lambda", "value": 0.05}, ledger_url))
        started = time.time()
        with ThreadedServer(create_app(config, settings)) as gateway:
            sent = asyncio.run(_send(gateway.url, texts, concurrency, score_of))
            if serve:
                _hold(gateway.url)
    ids = [rid for _, rid in sent]
    ledger = Ledger(ledger_url)
    try:
        df = ledger.recent(limit=100_000)
        out = write_snapshot(ledger.engine, snapshot or settings.cache_dir / "demo" / "dashboard.html",
                             since=started - 1)
    finally:
        ledger.close()
    mine = df[df["id"].isin(ids)]
    return DemoResult(rows=rows, chosen=[m for m, _ in sent], request_ids=ids, router=router,
                      ledger_cost=float(mine["cost_usd"].sum()), ledger_rows=len(mine), test=test, snapshot=out)
