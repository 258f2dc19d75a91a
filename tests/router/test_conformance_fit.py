"""Conformance, part two: what fit promises when it fails, when it is repeated and when it is misused.

Run over every registered router plus a third party's (``nearest``, registered through the
``thalamus.routers`` entry point by the test plugin, installed for this whole module):

- a fit that fails (empty dataset, an embedder that raises, an invalid hyperparameter value) leaves
  the router unfitted: predict, route and save raise NotFittedError, never AttributeError;
- a refit with other hyperparameters (or on other data) leaves exactly the fitted state a fresh
  router fitted that way has, with no attribute left from the previous fit;
- an unknown hyperparameter, or an invalid value of a known one, is named in the error;
- ``partial_fit``, where a router offers it, refuses an unfitted router, returns self, learns from the
  feedback, names an unknown model, and survives save/load.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.router.plugins import install_plugin
from tests.router.test_conformance import FAST_PARAMS, HELD_OUT, MODELS, TRAIN, new_router, query_texts, synthetic
from thalamus.errors import ConfigError, DataError, NotFittedError, UnknownNameError
from thalamus.router import embedder_registry, registry
from thalamus.router.base import Router
from thalamus.router.registry import make_router, router_names

THIRD_PARTY = "nearest"
NAMES = sorted({*router_names(), THIRD_PARTY})
BASELINES = {"random", "best-single", "cheapest", "oracle"}
# an invalid value of each validated hyperparameter; the error must name the parameter
INVALID: dict[str, list[dict[str, Any]]] = {
    "knn": [{"k": 0}, {"prior": -1.0}, {"temperature": 0.0}, {"weighting": "cosine"}],
    "nearest": [{"k": 0}],
    "cluster": [{"groups": "topics"}, {"n_clusters": 0}, {"C": 0.0}, {"prior": -1.0}],
    "carrot": [{"estimator": "forest"}, {"k": 0}, {"n_estimators": 0}],
    "xgb": [{"n_estimators": 0}, {"max_depth": 0}, {"learning_rate": 0.0}],
    "mf": [{"loss": "hinge"}, {"dim": 0}, {"epochs": 0}, {"val_fraction": 1.0}],
    "bert": [{"epochs": 0}, {"max_seq_length": 0}, {"max_train_prompts": 0}],
    "linucb": [{"ridge": 0.0}, {"wtp": -1.0}, {"alpha": -0.5}],
    "thompson": [{"ridge": 0.0}, {"v": -0.1}, {"n_prob_samples": 0}],
}
# hyperparameters to refit with (first fit with FAST_PARAMS); a router not listed is refitted on other data
REFIT: dict[str, dict[str, Any]] = {
    "carrot": {"estimator": "knn", "k": 3},  # the first fit is an ensemble: linear and xgb state must go
    "knn": {"k": 3, "weighting": "uniform"},
    "nearest": {"k": 2},
    "cluster": {"groups": "kmeans", "n_clusters": 4},
    "xgb": {"n_estimators": 5, "max_depth": 2},
    "linucb": {"n_components": None},
    "thompson": {"n_components": 4},
    "mf": {"epochs": 2, "dim": 4},
}
OTHER_DATA = synthetic(1, seed=1)
MEASURED = {"train_seconds_"}  # how long the fit took: differs between any two fits
_FITTED: dict[str, Router] = {}


def fitted_copy(name: str) -> Router:
    """A router fitted on TRAIN with the conformance settings; fitted once per name (bert is slow)."""
    if name not in _FITTED:
        _FITTED[name] = new_router(name).fit(TRAIN)
    return copy.deepcopy(_FITTED[name])


@pytest.fixture(scope="module", autouse=True)
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The test plugin, installed the way a package would be, for every test of this module."""
    with pytest.MonkeyPatch.context() as mp:
        yield install_plugin(tmp_path_factory.mktemp("plugin"), mp)
    embedder_registry.refresh()
    registry.refresh()


def assert_unfitted(name: str, router: Router, tmp_path: Path) -> None:
    """Every public use of an unfitted router says so with NotFittedError."""
    texts = query_texts(name)
    calls = [lambda: router.predict_quality(texts), lambda: router.predict_cost(texts),
             lambda: router.route(texts[0]), lambda: router.save(tmp_path / "unfitted")]
    if hasattr(router, "partial_fit"):
        calls.append(lambda: router.partial_fit([(texts[0], MODELS[0], 1.0, 0.001)]))  # type: ignore[attr-defined]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    assert not any(k.endswith("_") and not k.startswith("_") for k in vars(router)), sorted(vars(router))


def test_the_third_party_router_is_registered_through_its_entry_point() -> None:
    assert THIRD_PARTY in router_names()
    router = make_router(THIRD_PARTY, embedder="hashing")
    assert type(router).__module__ == "thalamus_testplugin" and router.get_params()["k"] == 5


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_refit_on_an_empty_dataset_leaves_the_router_unfitted(name: str, tmp_path: Path) -> None:
    router = fitted_copy(name)
    empty = TRAIN.subset(np.array([], dtype=int), name="empty")
    with pytest.raises(DataError, match="empty: cannot fit"):
        router.fit(empty)
    assert_unfitted(name, router, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_a_fit_whose_embedder_fails_leaves_the_router_unfitted(name: str, third_party: Any, tmp_path: Path) -> None:
    klass = registry.get_router_class(name)
    if not klass.uses_embeddings:
        pytest.skip(f"{name} reads raw text, not embeddings")
    params = {**FAST_PARAMS.get(name, {}), "embedder": "counting"}
    third_party.CountingEmbedder.reset()
    router = make_router(name, seed=0, **params).fit(TRAIN)  # fitted once, so the refit has state to lose
    third_party.CountingEmbedder.fail_after = third_party.CountingEmbedder.calls
    try:
        with pytest.raises(RuntimeError, match="failing as told"):
            router.fit(TRAIN)
        assert_unfitted(name, router, tmp_path)
        fresh = make_router(name, seed=0, **params)
        with pytest.raises(RuntimeError, match="failing as told"):
            fresh.fit(TRAIN)
        assert_unfitted(name, fresh, tmp_path)
    finally:
        third_party.CountingEmbedder.reset()


INVALID_CASES = [(name, bad) for name in NAMES for bad in INVALID.get(name, [])]


@pytest.mark.parametrize(("name", "bad"), INVALID_CASES, ids=[f"{n}-{next(iter(b))}" for n, b in INVALID_CASES])
def test_an_invalid_value_is_named_and_leaves_the_router_unfitted(name: str, bad: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    router = fitted_copy(name)
    (key, value), = bad.items()
    setattr(router, key, value)  # as set_params / a CLI flag would, after a successful fit
    with pytest.raises(ConfigError, match=rf"\b{key}\b") as info:
        router.fit(TRAIN)
    assert repr(value) in str(info.value) or str(value) in str(info.value), str(info.value)
    assert_unfitted(name, router, tmp_path)
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        make_router(name, embedder="hashing", **{**FAST_PARAMS.get(name, {}), **bad}).fit(TRAIN)


def test_every_learned_built_in_router_has_invalid_values_checked() -> None:
    learned = set(router_names()) - BASELINES - {THIRD_PARTY}
    assert learned <= set(INVALID), sorted(learned - set(INVALID))


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_hyperparameter_is_named(name: str) -> None:
    with pytest.raises(UnknownNameError, match=r"no parameter\(s\) \['n_neighbours'\]") as info:
        make_router(name, n_neighbours=3)
    for param in registry.get_router_class(name).param_names():
        assert param in str(info.value)  # and the ones it does take are listed


def fitted_state(router: Router) -> dict[str, Any]:
    return {k: v for k, v in vars(router).items() if k.endswith("_") and not k.startswith("_")}


def assert_same_value(key: str, a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)
    elif isinstance(a, Router):
        assert type(a) is type(b) and a.get_params() == b.get_params(), key
        assert sorted(fitted_state(a)) == sorted(fitted_state(b)), key
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(f"{key}[{i}]", x, y)
    elif isinstance(a, (int, float, str, bool)) or a is None:
        assert a == b, key
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), key
        for sub in a:
            assert_same_value(f"{key}[{sub}]", a[sub], b[sub])
    # anything else (a faiss index, boosters) is compared through the predictions


@pytest.mark.parametrize("name", NAMES)
def test_a_refit_keeps_nothing_of_the_previous_fit(name: str) -> None:
    router = fitted_copy(name)
    other = REFIT.get(name)
    data = TRAIN if other else OTHER_DATA
    for key, value in (other or {}).items():
        setattr(router, key, value)
    router.fit(data)
    fresh = make_router(name, embedder="hashing", seed=0, **{**FAST_PARAMS.get(name, {}), **(other or {})}).fit(data)
    assert sorted(fitted_state(router)) == sorted(fitted_state(fresh))
    for key, value in fitted_state(fresh).items():
        if key not in MEASURED:
            assert_same_value(key, getattr(router, key), value)
    texts = data.texts[:4] if name == "oracle" else HELD_OUT
    np.testing.assert_allclose(router.predict_quality(texts), fresh.predict_quality(texts), atol=1e-6)
    np.testing.assert_allclose(router.predict_cost(texts), fresh.predict_cost(texts), rtol=1e-6)


ONLINE = [n for n in router_names() if hasattr(registry.get_router_class(n), "partial_fit")]  # built-ins


def test_the_online_routers_are_the_bandits() -> None:
    assert ONLINE == ["linucb", "thompson"]
    assert not hasattr(registry.get_router_class(THIRD_PARTY), "partial_fit")


@pytest.mark.parametrize("name", ONLINE)
def test_partial_fit_learns_from_feedback_and_survives_save_load(name: str, tmp_path: Path) -> None:
    assert_unfitted(name, new_router(name), tmp_path)
    router = new_router(name).fit(TRAIN)
    text, j = HELD_OUT[1], MODELS.index("small")
    before = router.quality_from_features(router.features([text]))[0, j]
    counts = np.array(router.counts_)  # type: ignore[attr-defined]
    returned = router.partial_fit([(text, "small", 1.0, 0.001)] * 20)  # type: ignore[attr-defined]
    assert returned is router
    after = router.quality_from_features(router.features([text]))[0, j]
    assert after > before + 0.05, (before, after)  # twenty successes pull the estimate up
    np.testing.assert_array_equal(router.counts_ - counts, [20, 0, 0])  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="unknown model 'huge'"):
        router.partial_fit([(text, "huge", 1.0, 0.001)])  # type: ignore[attr-defined]
    router.save(tmp_path / name)
    loaded = Router.load(tmp_path / name)
    np.testing.assert_array_equal(loaded.predict_quality(HELD_OUT), router.predict_quality(HELD_OUT))
    assert loaded.route(text).to_dict() == router.route(text).to_dict()
