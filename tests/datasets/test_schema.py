"""RoutingDataset: validation, selection, splits and the Parquet round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thalamus.datasets.schema import PreferenceDataset, Price, RoutingDataset
from thalamus.errors import DataError


def make(n: int = 20) -> RoutingDataset:
    rng = np.random.default_rng(0)
    prompts = pd.DataFrame({"text": [f"prompt number {i}" for i in range(n)], "task": ["a", "b"] * (n // 2)})
    return RoutingDataset(
        name="toy", prompts=prompts, models=["big", "small"],
        quality=rng.integers(0, 2, (n, 2)).astype(float), cost=np.tile([0.01, 0.001], (n, 1)),
        output_tokens=np.full((n, 2), 50.0), responses=np.full((n, 2), "ok", dtype=object),
        prices={"big": Price(10, 30), "small": Price(0.5, 1.5)},
    )


def test_parquet_round_trip(tmp_path: Path) -> None:
    ds = make()
    ds.quality[3, 1] = np.nan
    back = RoutingDataset.from_parquet(ds.to_parquet(tmp_path / "toy.parquet"))
    assert back.models == ["big", "small"]
    np.testing.assert_array_equal(back.quality, ds.quality)
    np.testing.assert_array_equal(back.cost, ds.cost)
    assert back.responses is not None and back.responses[0, 0] == "ok"
    assert back.prices["big"].output_per_m == 30
    assert back.prompts["prompt_id"].tolist() == ds.prompts["prompt_id"].tolist()
    assert not (tmp_path / "toy.parquet.tmp").exists()


def test_validation_names_row_and_model() -> None:
    ds = make()
    quality = ds.quality.copy()
    quality[4, 1] = 1.5
    with pytest.raises(DataError, match=r"row 4, model 'small'"):
        RoutingDataset(name="bad", prompts=ds.prompts, models=ds.models, quality=quality, cost=ds.cost)
    with pytest.raises(DataError, match="shape"):
        RoutingDataset(name="bad", prompts=ds.prompts, models=ds.models, quality=quality[:, :1], cost=ds.cost)


def test_hash_split_is_stable_and_order_free() -> None:
    ds = make(200)
    train, test = ds.train_test(test_size=0.3, seed=1)
    assert len(train) + len(test) == 200
    assert 40 <= len(test) <= 80
    shuffled = ds.subset(np.random.default_rng(5).permutation(200))
    _, test2 = shuffled.train_test(test_size=0.3, seed=1)
    assert sorted(test2.texts) == sorted(test.texts)


def test_own_split_wins_and_kfold_partitions() -> None:
    ds = make(10)
    ds.prompts["split"] = ["train"] * 7 + ["test"] * 3
    train, test = ds.train_test()
    assert (len(train), len(test)) == (7, 3)
    ds.prompts["split"] = ["train"] * 5 + ["val"] * 2 + ["test"] * 3  # val rows train; the test rows stay
    train, test = ds.train_test()
    assert (train.texts, test.texts) == (ds.texts[:7], ds.texts[7:])
    big = make(50)
    folds = list(big.kfold(5))
    seen = sorted(t for _, test in folds for t in test.texts)
    assert seen == sorted(big.texts)
    ids = big.fold_ids(5)
    expected = [[t for t, f in zip(big.texts, ids, strict=True) if f == i] for i in range(5)]
    assert [test.texts for _, test in folds] == expected


def test_select_models_and_summary() -> None:
    ds = make().select_models(["small"])
    assert ds.quality.shape == (20, 1) and list(ds.prices) == ["small"]
    summary = make().summary()
    assert summary["mean_cost_usd"].tolist() == pytest.approx([0.01, 0.001])
    with pytest.raises(DataError, match="unknown models"):
        make().select_models(["huge"])


def test_preference_dataset_checks_winner() -> None:
    votes = pd.DataFrame({"prompt_id": ["1"], "text": ["x"], "model_a": ["a"], "model_b": ["b"], "winner": ["c"]})
    with pytest.raises(DataError, match="row 0"):
        PreferenceDataset("p", votes)
    ok = PreferenceDataset("p", votes.assign(winner="tie"))
    assert ok.models == ["a", "b"]
