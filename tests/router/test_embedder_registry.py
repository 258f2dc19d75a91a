"""Embedders and routers from entry points, specs, and the embedder id an artifact is bound to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.gwhelpers import synthetic_dataset
from tests.router.plugins import plugin
from thalamus.errors import ConfigError, UnknownNameError
from thalamus.router.base import Router
from thalamus.router.embedder_registry import embedder_names, parse_spec
from thalamus.router.embedders import CachedEmbedder, HashingEmbedder, get_embedder
from thalamus.router.knn import KNNRouter
from thalamus.router.registry import make_router, router_names
from thalamus.router.truncation import head_tail

__all__ = ["plugin"]


def test_specs_parse_options_and_legacy_names() -> None:
    assert parse_spec("static:tail=64, max_tokens=256") == ("static", {"tail": 64, "max_tokens": 256})
    assert parse_spec("hashing-128") == ("hashing", {"dim": 128})
    assert parse_spec("minilm") == ("minilm", {})
    with pytest.raises(ConfigError, match="'tail' is not KEY=VALUE"):
        parse_spec("static:tail")


def test_builtins_are_registered_and_unknown_names_list_them() -> None:
    assert {"minilm", "minilm-int8", "static", "hashing"} <= set(embedder_names())
    with pytest.raises(UnknownNameError, match=r"unknown embedder 'nope'.*static"):
        get_embedder("nope")
    with pytest.raises(ConfigError, match="hashing"):
        get_embedder("hashing:colour=3")
    emb = get_embedder("hashing-128")
    assert isinstance(emb, CachedEmbedder) and emb.id == HashingEmbedder(128).id


def test_head_tail_keeps_both_ends() -> None:
    ids = list(range(10))
    assert head_tail(ids, 6, 2) == [0, 1, 2, 3, 8, 9]
    assert head_tail(ids, 6, 0) == [0, 1, 2, 3, 4, 5]
    assert head_tail(ids, 20, 5) == ids


def test_third_party_embedder_and_router_from_entry_points(plugin: Any, tmp_path: Path) -> None:
    assert "counting" in embedder_names() and "nearest" in router_names()
    ds = synthetic_dataset(50)
    router = make_router("nearest").fit(ds)  # the plugin router on the plugin embedder
    assert router.embedder_id_ == "counting-64" and router.k == 5
    reloaded = Router.load(router.save(tmp_path / "nearest"))
    assert type(reloaded).__name__ == "NearestRouter"
    texts = ["Question 3: what is 3 plus 8?", "something else entirely"]
    np.testing.assert_allclose(reloaded.predict_quality(texts), router.predict_quality(texts))


def test_artifact_refuses_another_embedder(tmp_path: Path) -> None:
    ds = synthetic_dataset(40)
    out = KNNRouter(k=5, embedder="hashing-128").fit(ds).save(tmp_path / "knn")
    assert Router.load(out).embedder_id_ == "hashing-char24-128"
    with pytest.raises(ConfigError, match=r"trained on embedder 'hashing-char24-128'.*'hashing-char24-256'"):
        Router.load(out, embedder=get_embedder("hashing-256"))
    meta = json.loads((out / "router.json").read_text())
    meta["params"]["embedder"] = "hashing-64"  # an artifact whose spec no longer makes its vectors
    (out / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"knn: .*'hashing-char24-128'.*'hashing-char24-64'"):
        Router.load(out)
