"""The agreement grader on hand-built answers: the outlier agrees least, and a new model that gives the
consensus answer scores above the known models' mean, by a slope fitted on the known models."""

from __future__ import annotations

import numpy as np
import pandas as pd

from thalamus.datasets.schema import RoutingDataset
from thalamus.router.cluster import ClusterRouter
from thalamus.training.graders import _slope, agreement_scores, smoothie_agreement
from thalamus.training.probes import ProbeSet

N = 8


def test_smoothie_agreement_ranks_the_outlier_last() -> None:
    d = np.array([[0.0, 0.0, 0.1, 1.0],  # three answers agree (one a little off), the fourth is far away
                  [0.0, 0.0, 0.1, 1.0],
                  [0.1, 0.1, 0.0, 1.0],
                  [1.0, 1.0, 1.0, 0.0]])
    agree = smoothie_agreement(d)
    assert agree[0] == agree[1] > agree[2] > agree[3]


def test_slope_is_quality_per_unit_of_agreement() -> None:
    probs = np.ones((N, 1))
    peer_dev = np.tile([0.2, 0.0, -0.2], (N, 1))  # the better peer agrees more on every prompt
    predicted = np.tile([0.9, 0.6, 0.3], (N, 1))
    assert _slope(peer_dev, predicted, probs) > 0
    assert _slope(peer_dev, predicted[:, ::-1], probs) == 0.0  # the worse one agreeing more: no negative slope


def peers() -> tuple[ClusterRouter, ProbeSet]:
    """Three known models, one group: ``good`` always answers 42, ``mid`` most of the time, ``bad`` never."""
    mid = ["42" if i % 4 else f"m{i}" for i in range(N)]
    responses = np.array([["42", m, f"b{i}"] for i, m in enumerate(mid)], dtype=object)
    quality = np.array([[1.0, 1.0 if m == "42" else 0.0, 0.0] for m in mid])
    prompts = pd.DataFrame({"text": [f"what is six times seven, take {i}" for i in range(N)]})
    ds = RoutingDataset("hand", prompts, ["good", "mid", "bad"], quality, np.full(quality.shape, 0.001),
                        responses=responses)
    router = ClusterRouter(groups="kmeans", n_clusters=1, embedder="hashing").fit(ds)
    return router, ProbeSet(ds.name, ds.texts, ds)


def test_agreement_scores_the_consensus_above_the_peers_mean_and_the_outlier_below() -> None:
    router, probes = peers()
    rows = np.arange(N)
    probs = router.group_probabilities(router.features(probes.texts))
    peers_mean = float(router.group_quality_[0].mean())
    embedder = router.embedder_in_use()
    consensus = agreement_scores(router, probes, "new", rows, ["42"] * N, probs, embedder)
    outlier = agreement_scores(router, probes, "new", rows, [f"z{i}" for i in range(N)], probs, embedder)
    assert (consensus > peers_mean + 0.1).all()
    agreed = rows % 4 > 0  # where two peers give the same answer; elsewhere no answer agrees with another
    assert (outlier[agreed] < peers_mean - 0.1).all() and (outlier[~agreed] <= peers_mean + 1e-9).all()
