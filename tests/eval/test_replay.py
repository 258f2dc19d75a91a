"""Online replay on real routerbench prompts: rewards, regret, references, curves, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from thalamus.datasets.registry import load_dataset
from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import DataError
from thalamus.eval.replay import replay
from thalamus.router.embedders import get_embedder
from thalamus.router.knn import KNNRouter
from thalamus.router.registry import make_router


@pytest.fixture(scope="module")
def stream(data_dir: Path) -> tuple[RoutingDataset, np.ndarray, RoutingDataset, np.ndarray]:
    ds = load_dataset("routerbench_subset", data_dir)
    ds = ds.subset(np.arange(0, ds.n_prompts, 6))
    X = get_embedder("hashing").embed(ds.texts)
    warm = np.arange(ds.n_prompts) % 10 == 0  # 10% warm start, the rest arrives online
    return ds.subset(warm), X[warm], ds.subset(~warm), X[~warm]


def test_bandit_replay_numbers_and_curves(stream: tuple, tmp_path: Path) -> None:
    warm, Xw, live, Xl = stream
    router = make_router("linucb", embedder="hashing", n_components=16)
    result = replay(router, live, Xl, warm=warm, warm_features=Xw, seed=3)
    n = live.n_prompts
    assert result.n_steps == n and sorted(result.order.tolist()) == list(range(n))
    assert router.n_updates_ == n  # one bandit update per step
    assert (result.reward <= result.oracle_reward + 1e-12).all()  # the oracle is the per-step max
    expected = live.quality[result.order, result.chosen] - live.cost[result.order, result.chosen] / result.wtp
    np.testing.assert_allclose(result.reward, expected)
    summary = result.summary()
    json.dumps(summary)  # JSON-able
    assert summary["regret_vs_oracle"] >= 0 and summary["wtp"] == pytest.approx(router.cost_scale_)
    assert summary["last_half_reference_mean_reward"] > 0.5
    assert 0.5 < summary["last_half_reward_ratio_vs_reference"] < 1.2
    png = result.plot(tmp_path / "replay.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_replay_and_static_routers_replay_too(stream: tuple) -> None:
    warm, Xw, live, Xl = stream
    runs = [replay(make_router("thompson", embedder="hashing", n_components=8), live, Xl, warm=warm,
                   warm_features=Xw, seed=1, reference=None) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].chosen, runs[1].chosen)
    assert runs[0].reference_reward is None and (runs[0].probability > 0).all()
    static = KNNRouter(k=20, embedder="hashing")
    result = replay(static, live, Xl, warm=warm, warm_features=Xw, wtp=0.01, seed=1, reference=None)
    assert result.wtp == 0.01 and (result.probability == 1.0).all()


def test_replay_refuses_mismatched_inputs(stream: tuple) -> None:
    warm, Xw, live, Xl = stream
    with pytest.raises(DataError, match="feature rows"):
        replay(make_router("linucb", embedder="hashing"), live, Xl[:-1], warm=warm, warm_features=Xw)
