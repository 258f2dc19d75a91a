"""Expert-load telemetry for Mixture-of-Experts models: how many tokens each expert of each layer received.

transformers models that can return router logits (Mixtral, Qwen2-MoE, OLMoE and the other MoE models it
ships) declare the router module class in ``_can_record_outputs["router_logits"]``. Forward hooks on those
modules capture the logits of every MoE layer; asking the model itself (``output_router_logits=True``)
would also compute the auxiliary load-balancing loss, which breaks on incremental decoding with a padding
mask. The experts a token is sent to are the top-k of those logits (softmax keeps the order), so the
counts are recomputed from them here, per batch row, ignoring padding positions. Expert load balance and
expert placement start from these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k")
_N_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class MoeInfo:
    """What a model's routing looks like: experts per MoE layer and experts chosen per token."""

    num_experts: int
    top_k: int


def moe_info(model: Any) -> MoeInfo | None:
    """MoeInfo when ``model`` has routers to watch, else None (a dense model)."""
    config = model.config
    top_k = next((getattr(config, k) for k in _TOP_K_KEYS if isinstance(getattr(config, k, None), int)), None)
    n = next((getattr(config, k) for k in _N_EXPERT_KEYS if isinstance(getattr(config, k, None), int)), None)
    if top_k is None or n is None or not router_modules(model):
        return None
    return MoeInfo(num_experts=n, top_k=top_k)


def _router_recorder(model: Any) -> tuple[type, int] | None:
    for module in model.modules():
        recorder = (getattr(module, "_can_record_outputs", None) or {}).get("router_logits")
        if recorder is None:
            continue
        if isinstance(recorder, type):
            return recorder, 0
        return recorder.target_class, int(getattr(recorder, "index", 0) or 0)
    return None


def router_logits_index(model: Any) -> int:
    """Where the logits sit in a router's output tuple (0 when the router returns them alone)."""
    found = _router_recorder(model)
    return found[1] if found else 0


def router_modules(model: Any) -> list[Any]:
    """The router (gate) modules of every MoE layer, in layer order."""
    found = _router_recorder(model)
    if found is None:
        return []
    return [m for m in model.modules() if isinstance(m, found[0])]


class RouterTap:
    """Forward hooks that keep the router logits of the latest forward pass, one tensor per MoE layer."""

    def __init__(self, model: Any) -> None:
        found = _router_recorder(model)
        self.index = found[1] if found else 0
        self.captured: list[Any] = []
        self.handles = [m.register_forward_hook(self._hook) for m in router_modules(model)]

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.captured.append(output[self.index] if isinstance(output, tuple | list) else output)

    def take(self) -> tuple[Any, ...]:
        """The logits captured since the last call."""
        out, self.captured = tuple(self.captured), []
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def count_experts(router_logits: tuple[torch.Tensor, ...], mask: torch.Tensor, info: MoeInfo) -> torch.Tensor:
    """Tokens routed to each expert: int64 (batch, moe_layers, experts) from per-layer (batch*seq, E) logits.

    ``mask`` (batch, seq) is 1 where a position is a real token; padding contributes nothing.
    """
    import torch

    batch, seq = mask.shape
    keep = mask.to(torch.int64).reshape(batch, seq, 1)
    per_layer = []
    for logits in router_logits:
        chosen = logits.reshape(batch, seq, -1).topk(info.top_k, dim=-1).indices  # (batch, seq, k)
        counts = torch.zeros(batch, info.num_experts, dtype=torch.int64)
        counts.scatter_add_(1, chosen.reshape(batch, -1), keep.expand(-1, -1, info.top_k).reshape(batch, -1))
        per_layer.append(counts)
    return torch.stack(per_layer, dim=1)


def expert_load_payload(counts: torch.Tensor, tokens: int, info: MoeInfo) -> dict[str, Any]:
    """The ``thalamus.expert_load`` field of a response, for one request's (layers, experts) counts."""
    return {
        "tokens": tokens,
        "top_k": info.top_k,
        "num_experts": info.num_experts,
        "layers": counts.tolist(),
    }
