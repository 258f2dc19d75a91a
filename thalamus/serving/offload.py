"""Expert offloading: an MoE model keeps only N experts per layer in memory and reads the rest from disk.

transformers (5.x) holds each layer's routed experts as fused 3D parameters ``[num_experts, ...]`` in one
experts module, next to the layer's router (``gate``) inside the MoE block; Qwen2-MoE's shared expert is
an ordinary MLP beside them and stays resident. :func:`attach_offload` finds, per MoE layer, the router
(:func:`thalamus.serving.moe.router_modules`) and the sibling module whose parameters lead with
``num_experts``; it writes every expert's slice once into a safetensors file under the cache directory,
frees the fused tensors and puts :class:`OffloadedExperts` in the experts module's place. The server
does not load the experts first: :mod:`thalamus.serving.offload_load` writes the same store straight from
the checkpoint and installs the same caches on a model whose fused tensors never left the meta device.

Each forward pass of a layer asks its :class:`~thalamus.serving.expert_cache.LayerCache` for the experts
the router chose, remaps the routing indices onto the cache's ``[N, ...]`` slot tensors and calls the
original experts module on them with ``num_experts = N``. Every token still meets the same experts with
the same weights, and the per-token sums keep their order (see :class:`OffloadedExperts` for the one
case that needs care), so whichever experts implementation the model uses (eager loop, grouped_mm,
batched_mm) does the same arithmetic as on the full tensors: greedy outputs are identical.

With the ``predict`` policy, a pre-hook on layer l's MoE block runs layer l+1's router on layer l's input
(the residual stream changes little from one layer to the next) and reads the experts it picks in a
background thread, so the read overlaps layer l's experts and layer l+1's attention; a wrong guess
falls back to an on-demand read. A layer whose guesses are mostly wasted (a router that keeps choosing
the resident experts leaves only wrong guesses to prefetch) prefetches only on every 16th pass until
its guesses improve.
"""

from __future__ import annotations

import gc
import hashlib
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thalamus.serving.expert_cache import LayerCache, OffloadStats, Tensors
from thalamus.serving.moe import MoeInfo, moe_info, router_logits_index, router_modules
from thalamus.serving.tensorfile import Planned, read_header, read_into, write_streamed

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

STORE_FILE = "experts.safetensors"
MIN_PRECISION = 0.2  # below this share of used prefetches, a layer only prefetches on probe passes
PROBE_EVERY = 16  # passes between probes, so a layer whose guesses improve starts prefetching again


@dataclass
class ExpertLayer:
    """One MoE layer: its block, router, experts module (attribute ``attr`` of the block) and fused names."""

    block: Any
    router: Any
    experts: Any
    attr: str
    params: tuple[str, ...]


def _parents(model: Any) -> dict[int, tuple[Any, str]]:
    return {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}


def _fused_params(module: Any, num_experts: int) -> tuple[str, ...]:
    return tuple(name for name, p in module.named_parameters(recurse=False)
                 if p.dim() >= 2 and p.shape[0] == num_experts)


def find_expert_layers(model: Any, num_experts: int) -> list[ExpertLayer]:
    """The MoE layers whose experts are fused ``[num_experts, ...]`` parameters, in layer order."""
    parents = _parents(model)
    layers = []
    for router in router_modules(model):
        block, _ = parents[id(router)]
        for attr, child in block.named_children():
            if child is router or getattr(child, "num_experts", None) != num_experts:
                continue
            params = _fused_params(child, num_experts)
            if params:
                layers.append(ExpertLayer(block, router, child, attr, params))
                break
    return layers


class ExpertStore:
    """Per-expert tensors in one safetensors file; a read copies one expert into memory with ``pread``.

    Not memory-mapped: pages of a mapped file that a read touches count as the process's resident
    memory until unmapped, so over time the whole store would show up in the server's RSS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = read_header(path)
        self._fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)  # pread is thread-safe: no lock

    @staticmethod
    def key(layer: int, param: str, expert: int) -> str:
        return f"{layer}.{param}.{expert}"

    def nbytes(self, layer: int, params: tuple[str, ...], expert: int) -> int:
        """Bytes of one expert's tensors, from the header (nothing read)."""
        return sum(self.entries[self.key(layer, p, expert)].end - self.entries[self.key(layer, p, expert)].start
                   for p in params)

    def read(self, layer: int, params: tuple[str, ...], expert: int) -> tuple[Tensors, int]:
        tensors = {p: read_into([(self.entries[self.key(layer, p, expert)], None)], self._fd) for p in params}
        return tensors, sum(t.numel() * t.element_size() for t in tensors.values())

    def close(self) -> None:
        self._closer()


def store_folder(root: Path, name: str, model_folder: Path, dtype: str) -> Path:
    """``root/<name>-<fingerprint>``: a new checkpoint (other files, sizes or times) gets a new store."""
    digest = hashlib.sha1(dtype.encode())
    for file in sorted(model_folder.glob("*.safetensors")) + sorted(model_folder.glob("*.bin")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return root / f"{name}-{digest.hexdigest()[:16]}"


def store_plan(layers: list[ExpertLayer]) -> list[Planned]:
    """The store's tensors for a model whose fused expert tensors are loaded: views of its slices."""
    def view(tensor: Any, expert: int) -> Callable[[], Any]:
        return lambda: tensor[expert]

    return [Planned(ExpertStore.key(i, p, e), tensor.dtype, tuple(tensor.shape[1:]), view(tensor, e))
            for i, layer in enumerate(layers) for p in layer.params
            for tensor in (getattr(layer.experts, p),) for e in range(tensor.shape[0])]


def write_store(plan: list[Planned], folder: Path) -> Path:
    """Write every expert's slices once, one at a time (atomically: a crash never leaves half a store)."""
    path = folder / STORE_FILE
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_streamed(path, plan)
    return path


class OffloadedExperts:
    """Callable stand-in for an experts module: fetch the chosen experts, run the original on them.

    The routing indices are remapped onto the layer cache's slots and the original module runs on the
    slot tensors with ``num_experts = capacity``: no copy of weights per pass. Only the eager loop with
    top_k >= 3 adds the experts' outputs in the order of their positions, so there the slots must be in
    the experts' order for bit-identical sums; otherwise (and when a pass needs more experts than fit)
    the chosen experts are stacked in ascending order instead.
    """

    def __init__(self, inner: Any, params: tuple[str, ...], cache: LayerCache, num_experts: int,
                 top_k: int) -> None:
        self.inner, self.params, self.cache, self.num_experts = inner, params, cache, num_experts
        config = getattr(inner, "config", None)
        eager = getattr(config, "_experts_implementation", "eager") in (None, "eager")
        self.order_matters = eager and top_k >= 3

    def __call__(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                 *args: Any, **kwargs: Any) -> Any:
        import torch

        # a decode step routes a handful of (token, expert) pairs: plain Python beats torch.unique here
        ids = sorted({e for e in top_k_index.flatten().tolist() if e < self.num_experts})
        weights, where = self._weights(ids)
        table = [self.cache.capacity + len(ids)] * (self.num_experts + 1)
        for expert, index in zip(ids, where, strict=True):
            table[expert] = index
        remapped = torch.tensor(table, dtype=top_k_index.dtype)[top_k_index]
        inner = self.inner
        for p in self.params:
            setattr(inner, p, weights[p])
        inner.num_experts = weights[self.params[0]].shape[0]
        try:
            return inner(hidden_states, remapped, top_k_weights, *args, **kwargs)
        finally:  # only the cache holds experts between passes
            for p in self.params:
                setattr(inner, p, None)
            inner.num_experts = self.num_experts

    def _weights(self, ids: list[int]) -> tuple[Tensors, list[int]]:
        """The tensors to run on and, per chosen expert (ascending), its index in them."""
        import torch

        if len(ids) <= self.cache.capacity:
            slots = self.cache.fetch_slots(ids)
            if not self.order_matters or slots == sorted(slots):
                return self.cache.slots, slots
            pick = torch.tensor(slots)
            return {p: t.index_select(0, pick) for p, t in self.cache.slots.items()}, list(range(len(ids)))
        copies = self.cache.fetch_copies(ids)
        return {p: torch.stack([c[p] for c in copies]) for p in self.params}, list(range(len(ids)))


class ExpertOffload:
    """The offloading of one loaded model: per-layer caches, the store, the prefetch thread, counters."""

    def __init__(self, model: Any, layers: list[ExpertLayer], store: ExpertStore, resident: int,
                 policy: str, num_experts: int, top_k: int) -> None:
        self.layers, self.store, self.resident, self.policy = layers, store, resident, policy
        self.num_experts, self.top_k = num_experts, top_k
        self.stats = OffloadStats()
        self.on_pass: Callable[[OffloadStats], None] | None = None  # called after every forward pass
        self._taken = self._flushed = OffloadStats()
        self.passes = 0
        self.caches = [LayerCache(resident, policy, self._loader(i, layer), self.stats)
                       for i, layer in enumerate(layers)]
        self.expert_bytes = [store.nbytes(i, layer.params, 0) for i, layer in enumerate(layers)]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="expert-prefetch") if policy == "predict" else None
        self._handles = [model.register_forward_hook(self._after_pass)]
        if self._pool is not None:
            self._logits_at = router_logits_index(model)
            self._handles += [layers[i].block.register_forward_pre_hook(self._prefetcher(i + 1))
                              for i in range(len(layers) - 1)]

    def _loader(self, index: int, layer: ExpertLayer) -> Callable[[int], tuple[Tensors, int]]:
        return lambda expert: self.store.read(index, layer.params, expert)

    def resident_bytes(self) -> int:
        """Bytes the caches may hold when full: what the model pool charges for the experts."""
        return self.resident * sum(self.expert_bytes)

    def _prefetcher(self, target: int) -> Callable[[Any, tuple[Any, ...]], None]:
        def hook(block: Any, args: tuple[Any, ...]) -> None:
            if args:
                self._predict(target, args[0])
        return hook

    def _predict(self, target: int, hidden: torch.Tensor) -> None:
        """Read ahead the experts layer ``target``'s router would pick for ``hidden`` (at most N)."""
        import torch

        assert self._pool is not None
        cache = self.caches[target]
        if cache.precision < MIN_PRECISION and self.passes % PROBE_EVERY:
            return  # its guesses have mostly been wrong lately: the reads would cost more than they save
        router = self.layers[target].router
        out = router.forward(hidden)  # .forward, not __call__: the telemetry hooks must not see a guess
        logits = out[self._logits_at] if isinstance(out, tuple | list) else out
        picks = logits.reshape(-1, logits.shape[-1]).topk(self.top_k, dim=-1).indices.flatten()
        votes = torch.bincount(picks, minlength=self.num_experts)
        order = votes.argsort(descending=True, stable=True)[: self.resident]
        wanted = [int(e) for e in order if votes[e] > 0]
        pool = self._pool
        cache.prefetch(wanted, lambda e: pool.submit(cache.loader, e))

    def _after_pass(self, *_: Any) -> None:
        self.passes += 1
        if self.on_pass is not None:
            now = OffloadStats().add(self.stats)
            self.on_pass(now.minus(self._flushed))
            self._flushed = now

    def take(self) -> OffloadStats:
        """The counts since the previous call (the engine charges them to the requests of that pass)."""
        now = OffloadStats().add(self.stats)
        delta, self._taken = now.minus(self._taken), now
        return delta

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for cache in self.caches:
            cache.clear()
        self.store.close()


def offload_of(model: Any) -> ExpertOffload | None:
    """The model's :class:`ExpertOffload` when its experts are offloaded, else None."""
    found = getattr(model, "thalamus_offload", None)
    return found if isinstance(found, ExpertOffload) else None


def check_resident(name: str, resident: int, top_k: int, num_experts: int) -> None:
    if not top_k <= resident <= num_experts:
        raise ValueError(f"model {name!r}: offload.experts_resident={resident} must be between the model's "
                         f"top_k ({top_k}) and num_experts ({num_experts})")


def moe_layers(model: Any, name: str, resident: int) -> tuple[MoeInfo, list[ExpertLayer]]:
    """The model's routing and MoE layers; errors name the model when it cannot be offloaded."""
    info = moe_info(model)
    if info is None:
        raise ValueError(f"model {name!r}: offload is configured but the model has no MoE layers")
    check_resident(name, resident, info.top_k, info.num_experts)
    layers = find_expert_layers(model, info.num_experts)
    if not layers:
        raise ValueError(f"model {name!r}: offload needs experts stored as fused [num_experts, ...] "
                         f"parameters beside the router; {type(model).__name__} has none")
    return info, layers


def install_offload(model: Any, layers: list[ExpertLayer], store: ExpertStore, resident: int, policy: str,
                    info: MoeInfo) -> ExpertOffload:
    """Drop the fused expert tensors (loaded or still on the meta device) and route through the caches."""
    offload = ExpertOffload(model, layers, store, resident, policy, info.num_experts, info.top_k)
    for layer, cache in zip(layers, offload.caches, strict=True):
        for p in layer.params:
            del layer.experts._parameters[p]  # the fused tensors go; the store holds them now
        del layer.block._modules[layer.attr]  # a plain attribute from here: the block just calls it
        setattr(layer.block, layer.attr, OffloadedExperts(layer.experts, layer.params, cache,
                                                          info.num_experts, info.top_k))
    model.thalamus_offload = offload
    gc.collect()
    return offload


def attach_offload(model: Any, name: str, resident: int, policy: str, folder: Path) -> ExpertOffload:
    """Offload a loaded ``model``'s routed experts to ``folder``/experts.safetensors, keeping ``resident``."""
    info, layers = moe_layers(model, name, resident)
    store = ExpertStore(write_store(store_plan(layers), folder))
    return install_offload(model, layers, store, resident, policy, info)
