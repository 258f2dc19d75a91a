"""Local routing consistency of an MoE model: how well one fixed set of experts serves a run of tokens.

Expert offloading keeps a few experts per layer in fast memory; it pays off only when consecutive tokens
keep asking for the same experts. Liang et al., "Not All Models Suit Expert Offloading: On Local Routing
Consistency of Mixture-of-Expert Models" (arXiv 2505.16056) measure this over every segment of ``m``
consecutive tokens (a sliding window inside each text) of each MoE layer, from the top-k experts each
token is routed to. With ``c_e`` = tokens of the segment routed to expert ``e``:

- **SRP(m)**, segment routing best performance: predict "expert ``e`` serves all ``m`` tokens" when
  ``c_e >= t``; a prediction matches ``c_e`` activations and claims ``m``. Summed over all segments,
  layers and experts, F1(t) = 2 * matches / (claimed + activations), and SRP is the best F1 over the
  threshold ``t`` in 1..m. Constant routing gives 1.0; routing that never repeats within ``m`` tokens
  gives ``1/m``-ish values.
- **SCH(m, c)**, segment cache best hit rate: a cache of ``c`` experts per layer, filled for each
  segment with its ``c`` most used experts (an oracle that sees ``m`` tokens ahead); the share of the
  segment's ``m * k`` activations it serves, averaged over segments and layers.

- **static hit rate(c)**, for reference: one cache per layer holding the ``c`` experts most used over
  all texts, never changed; what an offloading system gets from global expert popularity alone.

A routing trace here is an int array (layers, tokens, k) of expert ids, one per text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from thalamus.errors import DataError

Trace = np.ndarray  # (layers, tokens, top_k) expert ids


def segment_counts(trace: Trace, num_experts: int, m: int) -> np.ndarray:
    """(layers, segments, experts): tokens of each length-``m`` window routed to each expert."""
    if trace.ndim != 3:
        raise DataError(f"a routing trace is (layers, tokens, top_k); got shape {trace.shape}")
    if int(trace.max(initial=0)) >= num_experts or int(trace.min(initial=0)) < 0:
        raise DataError(f"routing trace names experts outside 0..{num_experts - 1}")
    layers, tokens, _ = trace.shape
    hits = np.zeros((layers, tokens, num_experts), dtype=np.int64)
    np.add.at(hits, (np.arange(layers)[:, None, None], np.arange(tokens)[None, :, None], trace), 1)
    if tokens < m:
        return np.zeros((layers, 0, num_experts), dtype=np.int64)
    running = np.concatenate([np.zeros((layers, 1, num_experts), dtype=np.int64), hits.cumsum(axis=1)], axis=1)
    return running[:, m:] - running[:, :-m]


def srp(traces: Sequence[Trace], num_experts: int, m: int) -> float:
    """Segment routing best performance over all texts' segments of ``m`` tokens (nan: none that long)."""
    histogram = np.zeros(m + 1, dtype=np.int64)  # (layer, segment, expert) cells by their count
    for trace in traces:
        counts = segment_counts(trace, num_experts, m)
        histogram += np.bincount(counts.ravel(), minlength=m + 1)[: m + 1]
    values = np.arange(m + 1)
    activations = int((histogram * values).sum())
    if activations == 0:
        return float("nan")
    # matches(t) and claimed(t) for t = 1..m: suffix sums over counts >= t
    matches = np.cumsum((histogram * values)[::-1])[::-1][1:]
    claimed = m * np.cumsum(histogram[::-1])[::-1][1:]
    return float((2 * matches / (claimed + activations)).max())


def sch(traces: Sequence[Trace], num_experts: int, m: int, cache: int) -> float:
    """Segment cache best hit rate with ``cache`` experts per layer over segments of ``m`` tokens."""
    hit = 0
    total = 0
    for trace in traces:
        counts = segment_counts(trace, num_experts, m)
        if counts.shape[1] == 0:
            continue
        top = np.sort(counts, axis=-1)[..., ::-1][..., :cache]
        hit += int(top.sum())
        total += int(counts.sum())
    return hit / total if total else float("nan")


def static_hit_rate(traces: Sequence[Trace], num_experts: int, cache: int) -> float:
    """Hit rate of a fixed per-layer cache of the ``cache`` experts most used over all ``traces``."""
    if not traces:
        return float("nan")
    per_layer = sum(segment_counts(t, num_experts, 1).sum(axis=1) for t in traces)  # (layers, experts)
    total = int(np.sum(per_layer))
    return int(np.sort(per_layer, axis=-1)[:, ::-1][:, :cache].sum()) / total if total else float("nan")


def routing_traces(model: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[Trace]:
    """The top-k experts each token of each text is routed to, per MoE layer (one forward pass a text)."""
    import torch

    from thalamus.serving.moe import RouterTap, moe_info

    info = moe_info(model)
    if info is None:
        raise DataError(f"{type(model).__name__} has no MoE routers to trace")
    tap = RouterTap(model)
    traces: list[Trace] = []
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_tokens]
                tap.take()
                model(input_ids=ids)
                logits = tap.take()
                chosen = [x.reshape(ids.shape[1], -1).topk(info.top_k, dim=-1).indices for x in logits]
                traces.append(torch.stack(chosen).numpy())
    finally:
        tap.close()
    return traces
