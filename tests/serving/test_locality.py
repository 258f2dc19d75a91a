"""SRP and SCH on hand-made routing traces whose answers are worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from thalamus.errors import DataError
from thalamus.serving.locality import routing_traces, sch, segment_counts, srp, static_hit_rate


def constant(tokens: int, layers: int = 2) -> np.ndarray:
    """Every token of every layer goes to experts 0 and 1."""
    return np.tile(np.array([0, 1]), (layers, tokens, 1))


def alternating(tokens: int) -> np.ndarray:
    """Tokens alternate between experts {0, 1} and {2, 3}; one layer."""
    rows = [[0, 1] if t % 2 == 0 else [2, 3] for t in range(tokens)]
    return np.array([rows])


def test_segment_counts_are_window_sums() -> None:
    counts = segment_counts(alternating(5), num_experts=4, m=2)
    assert counts.shape == (1, 4, 4)
    assert counts.tolist() == [[[1, 1, 1, 1]] * 4]
    three = segment_counts(alternating(5), num_experts=4, m=3)
    assert three[0, 0].tolist() == [2, 2, 1, 1] and three[0, 1].tolist() == [1, 1, 2, 2]


def test_constant_routing_is_perfectly_consistent() -> None:
    for m in (1, 4, 16):
        assert srp([constant(40)], 8, m) == 1.0
        assert sch([constant(40)], 8, m, cache=2) == 1.0
    assert sch([constant(40)], 8, 4, cache=1) == 0.5  # one of the two experts per token


def test_alternating_routing_known_values() -> None:
    # m=2: each window uses 4 experts once; t=1 predicts all 4 for both tokens:
    # matches 4, claimed 2*4 = 8, activations 4 -> F1 = 8 / 12
    assert srp([alternating(10)], 4, 2) == pytest.approx(2 / 3)
    assert srp([alternating(10)], 4, 4) == pytest.approx(2 / 3)  # counts 2 of 4: same ratio
    assert srp([alternating(10)], 4, 1) == 1.0  # one token: its own experts
    assert sch([alternating(10)], 4, 2, cache=2) == pytest.approx(0.5)
    assert sch([alternating(10)], 4, 2, cache=4) == 1.0
    # m=3 windows: counts (2,2,1,1) -> the best 2 experts serve 4 of 6 activations
    assert sch([alternating(10)], 4, 3, cache=2) == pytest.approx(4 / 6)


def test_static_cache_sees_only_global_popularity() -> None:
    # alternating routing: 4 experts equally popular, a fixed 2-expert cache serves half of the activations,
    # while a cache refilled per 1-token segment (SCH) serves all of them
    assert static_hit_rate([alternating(10)], 4, cache=2) == pytest.approx(0.5)
    assert sch([alternating(10)], 4, 1, cache=2) == 1.0
    assert static_hit_rate([constant(5)], 8, cache=1) == pytest.approx(0.5)
    # two texts with disjoint constant experts: each layer's top-2 over both texts serves half
    other = np.tile(np.array([2, 3]), (2, 5, 1))
    assert static_hit_rate([constant(5), other], 8, cache=2) == pytest.approx(0.5)
    assert srp([constant(5), other], 8, 5) == 1.0


def test_srp_picks_the_best_threshold() -> None:
    # one layer, k=1, m=4: expert 0 three times, expert 1 once, in every window of the 4-token text
    trace = np.array([[[0], [0], [1], [0]]])
    # t=3 predicts expert 0 only: matches 3, claimed 4, activations 4 -> 6/8; t=1: 4 / (8 + 4) * 2 = 8/12
    assert srp([trace], 2, 4) == pytest.approx(0.75)


def test_short_texts_have_no_segments() -> None:
    assert math.isnan(srp([constant(3)], 8, 4))
    assert math.isnan(sch([constant(3)], 8, 4, cache=2))
    # a short text next to a long one contributes nothing, the long one decides
    assert srp([constant(3), alternating(9)], 4, 4) == pytest.approx(2 / 3)


def test_bad_traces_are_named() -> None:
    with pytest.raises(DataError, match=r"outside 0\.\.3"):
        segment_counts(np.array([[[0, 4]]]), num_experts=4, m=1)
    with pytest.raises(DataError, match="layers, tokens, top_k"):
        segment_counts(np.zeros((3, 2), dtype=np.int64), num_experts=4, m=1)


def test_random_weight_model_trace(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dir / "tiny-mixtral"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    traces = routing_traces(model, tokenizer, ["The quick brown fox jumps over the lazy dog."] * 2, 8)
    assert traces[0].shape == (2, 8, 2)  # 2 layers, cut to 8 tokens, top-2
    assert (traces[0] == traces[1]).all()  # routing is a function of the text
    assert srp(traces, 4, 1) == 1.0 and 0 < srp(traces, 4, 8) <= 1
