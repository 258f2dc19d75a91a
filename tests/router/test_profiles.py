"""Models as profiles: a cluster router takes a model it was not trained on, narrows it from graded
answers without letting a few noisy ones pull traffic, and saves it without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rbhelpers import routerbench_slice

from thalamus.datasets.schema import RoutingDataset
from thalamus.errors import ConfigError, DataError
from thalamus.router.base import Router
from thalamus.router.cluster import ClusterRouter
from thalamus.router.knn import KNNRouter
from thalamus.router.policy import Knob
from thalamus.router.profiles import ModelProfile

NEW = "gpt-4-1106-preview"
WEAK = "mistralai/mistral-7b-chat"


@pytest.fixture(scope="module")
def data(data_dir: Path) -> tuple[RoutingDataset, np.ndarray]:
    return routerbench_slice(data_dir)


def known_router(ds: RoutingDataset, X: np.ndarray, held: tuple[str, ...] = (NEW,)) -> ClusterRouter:
    known = [m for m in ds.models if m not in held]
    return ClusterRouter(embedder="hashing").fit(ds.select_models(known), X)


def group_of(router: ClusterRouter, ds: RoutingDataset) -> np.ndarray:
    return np.array([router.group_names_.index(t) for t in ds.tasks])


def test_pooled_prior_is_the_known_models_group_mean_and_takes_no_traffic(
        data: tuple[RoutingDataset, np.ndarray]) -> None:
    ds, X = data
    router = known_router(ds, X)
    before = router.group_quality_.copy()
    profile = router.add_model(NEW)
    assert profile.source == "pooled"
    np.testing.assert_allclose(profile.mean(), before.mean(axis=1))
    assert router.models_[-1] == NEW and router.group_quality_.shape == (len(router.group_names_), ds.n_models)
    # wide: its uncertainty is larger than any trained model's in every group
    trained_sd = np.sqrt(np.stack([router.profile(m).variance() for m in router.models_[:-1]]))
    assert (np.sqrt(profile.variance()) > trained_sd.max(axis=0)).all()
    quality, _ = router.predict_from_features(X[:50])
    assert (quality.argmax(axis=1) != ds.n_models - 1).all()  # a pooled mean never beats the best known model


def test_like_and_tier_priors(data: tuple[RoutingDataset, np.ndarray]) -> None:
    ds, X = data
    router = known_router(ds, X)
    table = router.group_quality_.copy()
    like = router.add_model("copy-of-claude", prior="like:claude-v2")
    j = router.models_.index("claude-v2")
    np.testing.assert_allclose(like.mean(), table[:, j])
    assert (like.variance() > router.profile("claude-v2").variance()).all()  # the copy counts for less
    np.testing.assert_allclose(like.cost(), router.profile("claude-v2").cost())
    top = router.add_model("frontier", prior="tier:top", cost=0.01)
    np.testing.assert_allclose(top.mean(), table.max(axis=1))
    np.testing.assert_allclose(top.cost(), 0.01)
    mid = router.add_model("middling", prior="tier:0.5")
    np.testing.assert_allclose(mid.mean(), np.median(table, axis=1))
    with pytest.raises(ConfigError, match=r"knows no model 'nope'.*claude-v2"):
        router.add_model("x", prior="like:nope")
    with pytest.raises(ConfigError, match="tier"):
        router.add_model("y", prior="tier:legendary")
    with pytest.raises(ConfigError, match="already has model 'frontier'"):
        router.add_model("frontier")


def test_few_noisy_probes_do_not_flip_routing_and_many_true_ones_do(data: tuple[RoutingDataset, np.ndarray]) -> None:
    ds, X = data
    router = known_router(ds, X, held=(NEW, WEAK))
    router.add_model(WEAK)
    probs = router.group_probabilities(X)
    router.observe(WEAK, probs[:5], np.ones(5))  # five lucky answers from a weak model
    quality, _ = router.predict_from_features(X)
    assert (quality.argmax(axis=1) != router.models_.index(WEAK)).all()
    weak = router.profile(WEAK)
    assert (weak.mean() < router.group_quality_[:, :-1].max(axis=1)).all()  # below the best known, every group
    assert np.abs(weak.mean() - weak.prior_mean).max() < 0.1  # five answers move the profile a little
    # the policy sees a lower confidence bound for a model added after training
    np.testing.assert_allclose(router.routing_quality()[:, -1], weak.mean() - np.sqrt(weak.variance()))

    router.add_model(NEW)
    new_col = ds.models.index(NEW)
    router.observe(NEW, probs, ds.quality[:, new_col], ds.cost[:, new_col])  # every prompt, graded truly
    truth = np.array([np.nanmean(ds.quality[group_of(router, ds) == g, new_col])
                      for g in range(len(router.group_names_))])
    assert np.abs(router.profile(NEW).mean() - truth).max() < 0.06
    decisions = [router.route_features(X[i:i + 1], Knob("lambda", 0.0)).model for i in range(60)]
    assert decisions.count(NEW) > 30  # the best model now takes most quality-first traffic
    assert router.profile(NEW).spent_usd == pytest.approx(float(np.nansum(ds.cost[:, new_col])))


def test_observe_checks_shapes_and_scores(data: tuple[RoutingDataset, np.ndarray]) -> None:
    ds, X = data
    router = known_router(ds, X)
    router.add_model(NEW)
    probs = router.group_probabilities(X[:3])
    with pytest.raises(ConfigError, match="need group probabilities of shape"):
        router.observe(NEW, probs[:2], np.ones(3))
    with pytest.raises(ConfigError, match=r"scores must be in \[0, 1\]"):
        router.observe(NEW, probs, np.array([0.5, 2.0, 1.0]))
    with pytest.raises(ConfigError, match="no model 'ghost'"):
        router.observe("ghost", probs, np.ones(3))
    with pytest.raises(ConfigError, match="caution must be >= 0"):
        ClusterRouter(embedder="hashing", caution=-1.0).fit(ds, X)


def test_save_load_roundtrip_keeps_profiles(data: tuple[RoutingDataset, np.ndarray], tmp_path: Path) -> None:
    ds, X = data
    router = known_router(ds, X)
    router.add_model(NEW, prior="like:claude-v2")
    router.observe(NEW, router.group_probabilities(X[:40]), ds.quality[:40, ds.models.index(NEW)])
    router.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "router.json").read_text())
    assert meta["format"] == 2
    loaded = Router.load(tmp_path / "a")
    assert isinstance(loaded, ClusterRouter) and loaded.models_ == router.models_
    assert loaded.profile(NEW).to_dict() == router.profile(NEW).to_dict()
    np.testing.assert_allclose(loaded.predict_from_features(X[:20])[0], router.predict_from_features(X[:20])[0])
    loaded.observe(NEW, loaded.group_probabilities(X[40:41]), np.array([1.0]))  # still learns after a reload
    assert loaded.profile(NEW).n_observed == 41


def test_format_1_artifact_gets_trained_profiles_and_newer_formats_are_refused(
        data: tuple[RoutingDataset, np.ndarray], tmp_path: Path) -> None:
    ds, X = data
    router = known_router(ds, X)
    path = router.save(tmp_path / "old")
    (path / "profiles.json").unlink()
    format2 = ("noise_var_", "resid_var_", "offset_var_", "group_count_")  # what format 1 did not save
    meta = json.loads((path / "router.json").read_text())
    meta["state"] = {k: v for k, v in meta["state"].items() if k not in format2}
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in format2}
    np.savez(path / "arrays.npz", allow_pickle=False, **arrays)
    (path / "router.json").write_text(json.dumps(meta | {"format": 1}))
    old = Router.load(path)
    assert isinstance(old, ClusterRouter)
    np.testing.assert_allclose(old.profile("claude-v2").mean(), router.profile("claude-v2").mean())
    old.add_model(NEW)  # an old artifact takes new models too
    (path / "router.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(DataError, match="format 99 is newer"):
        Router.load(path)


def test_profile_json_is_validated() -> None:
    with pytest.raises(ConfigError, match="field 'prior_count' is missing"):
        ModelProfile.from_dict({"name": "m", "source": "pooled", "prior_mean": [0.5]}, "x.json: profiles[0]")
    with pytest.raises(ConfigError, match=r"prior_count has shape \(1,\), expected \(2,\)"):
        ModelProfile("m", "pooled", np.zeros(2), np.ones(1), 1.0, np.ones(2), np.ones(2))


def test_remove_model_and_other_routers_refuse(data: tuple[RoutingDataset, np.ndarray]) -> None:
    ds, X = data
    router = known_router(ds, X)
    router.remove_model("claude-v2")
    assert "claude-v2" not in router.models_ and router.group_quality_.shape[1] == ds.n_models - 2
    assert router.predict_from_features(X[:3])[0].shape == (3, ds.n_models - 2)
    knn = KNNRouter(embedder="hashing", k=5).fit(ds, X)
    with pytest.raises(ConfigError, match=r"cannot add model 'new'.*cluster router"):
        knn.add_model("new")
