"""Loading an offloaded MoE without ever holding all its experts: peak memory stays near the resident size.

``from_pretrained`` materialises every weight before :func:`~thalamus.serving.offload.attach_offload`
can move the experts out, so a model larger than memory could not load at all. Here the model is built
with its parameters on the meta device (buffers such as rotary tables stay real), the checkpoint's
keys are mapped onto the model's names with transformers' own conversion rules (renamings such as
Mixtral's ``block_sparse_moe`` -> ``mlp``, and the converters that fuse per-expert tensors into
``[num_experts, ...]`` parameters), the dense weights are read and assigned, and the expert store is
written straight from the checkpoint, one expert's slice at a time, when it does not exist yet. The
fused expert parameters never leave the meta device; the layer caches fill on demand.

Checkpoints may hold experts per expert (``...experts.3.gate_proj.weight``, fused on load by a
``MergeModulelist(dim=0)`` converter, with ``Concatenate(dim=1)`` for gate and up: per expert, the
parts are concatenated along their first dimension) or already fused (``...experts.gate_up_proj``,
one ``[num_experts, ...]`` tensor, sliced per expert). Any other conversion of an expert tensor is
refused with the key and the operations named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thalamus.serving.offload import (
    STORE_FILE,
    ExpertLayer,
    ExpertOffload,
    ExpertStore,
    install_offload,
    moe_layers,
    write_store,
)
from thalamus.serving.tensorfile import Entry, Planned, read_header, read_into, read_range, torch_dtype

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

_EXPERT_INDEX = re.compile(r"(?:^|\.)experts\.(\d+)\.")


@dataclass
class CheckpointPlan:
    """Where each weight of the model comes from: dense tensors by model name, expert parts by store key."""

    dense: dict[str, Entry] = field(default_factory=dict)
    # (moe layer, fused param, expert) -> [(part index, entry, slice index or None)]
    parts: dict[tuple[int, str, int], list[tuple[int, Entry, int | None]]] = field(default_factory=dict)
    part_count: dict[tuple[int, str], int] = field(default_factory=dict)


def checkpoint_entries(folder: Path, name: str) -> dict[str, Entry]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model {name!r}: offloaded loading reads safetensors checkpoints; {folder} has none")
    return {key: entry for file in files for key, entry in read_header(file).items()}


def _skeleton(folder: Path, dtype: str, entries: dict[str, Entry]) -> Any:
    """The model with every parameter on the meta device (no memory), buffers real, generation config read."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    if dtype != "auto":
        chosen = getattr(torch, dtype)
    else:  # as from_pretrained: the config's dtype, else the checkpoint's first floating tensor's
        stored = next((e.dtype for e in entries.values() if e.dtype in ("F32", "F16", "BF16")), "F32")
        chosen = getattr(config, "dtype", None) or torch_dtype(stored)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=chosen).eval()  # before the experts leave it
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def _expert_params(model: Any, layers: list[ExpertLayer]) -> dict[str, tuple[int, str]]:
    """``model.layers.0.mlp.experts.gate_up_proj`` -> (MoE layer index, ``gate_up_proj``)."""
    names = {id(module): qualified for qualified, module in model.named_modules()}
    return {f"{names[id(layer.experts)]}.{p}": (i, p) for i, layer in enumerate(layers) for p in layer.params}


def _parts_of(converter: Any, key: str, name: str) -> int:
    """How many checkpoint tensors make one expert's slice; refuse conversions other than merge (+ concat)."""
    from transformers.core_model_loading import Concatenate, MergeModulelist

    ops = list(converter.operations)
    merge = bool(ops) and isinstance(ops[0], MergeModulelist) and ops[0].dim == 0
    concat = len(ops) == 2 and isinstance(ops[1], Concatenate) and ops[1].dim == 1
    if not merge or len(ops) > 2 or (len(ops) == 2 and not concat):
        raise ValueError(f"model {name!r}: checkpoint tensor {key!r} becomes an experts parameter through "
                         f"{[type(op).__name__ for op in ops]}; offloaded loading supports per-expert tensors "
                         "merged along dim 0 (gate and up concatenated) or fused [num_experts, ...] tensors")
    return len(converter.source_patterns)


def plan_checkpoint(model: Any, layers: list[ExpertLayer], entries: dict[str, Entry], num_experts: int,
                    name: str) -> CheckpointPlan:
    """Map every checkpoint key onto a dense parameter or buffer, an expert's part, or nothing (ignored)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    meta = model.state_dict()
    experts = _expert_params(model, layers)
    plan = CheckpointPlan()
    for key, entry in entries.items():
        target, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if target not in experts:
            if target in meta:
                plan.dense[target] = entry
            continue  # a key the model has no place for: from_pretrained ignores it too
        _add_expert_part(plan, key, entry, experts[target], pattern, converters, num_experts, name)
    return plan


def _add_expert_part(plan: CheckpointPlan, key: str, entry: Entry, target: tuple[int, str], pattern: str | None,
                     converters: list[Any], num_experts: int, name: str) -> None:
    """Record checkpoint tensor ``key`` as one part of one expert (or, fused, of every expert) of ``target``."""
    layer, param = target
    if pattern is None:  # already fused: one [num_experts, ...] tensor
        if entry.shape[:1] != (num_experts,):
            raise ValueError(f"model {name!r}: checkpoint tensor {key!r} has shape {list(entry.shape)}; "
                             f"a fused experts tensor leads with num_experts ({num_experts})")
        plan.part_count[target] = 1
        for e in range(num_experts):
            plan.parts.setdefault((layer, param, e), []).append((0, entry, e))
        return
    converter = next(c for c in converters if pattern in c.source_patterns)
    plan.part_count[target] = _parts_of(converter, key, name)
    found = _EXPERT_INDEX.search(key)
    if found is None:
        raise ValueError(f"model {name!r}: checkpoint tensor {key!r} is a per-expert tensor without an "
                         "'experts.<index>.' in its name")
    part = list(converter.source_patterns).index(pattern)
    plan.parts.setdefault((layer, param, int(found.group(1))), []).append((part, entry, None))


def _reader(parts: list[tuple[int, Entry, int | None]], dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """Reads one expert's slice: its parts (gate, up) in the converter's order, concatenated."""
    ordered = [(entry, index) for _, entry, index in sorted(parts, key=lambda p: p[0])]
    return lambda: read_into(ordered).to(dtype)


def expert_plan(layers: list[ExpertLayer], plan: CheckpointPlan, num_experts: int, name: str) -> list[Planned]:
    """The store's tensors, each read from the checkpoint when the writer gets to it."""
    out = []
    for i, layer in enumerate(layers):
        for p in layer.params:
            fused = getattr(layer.experts, p)  # still on the meta device: shape and dtype only
            for e in range(num_experts):
                parts = plan.parts.get((i, p, e), [])
                if not parts or len(parts) != plan.part_count.get((i, p)):
                    raise ValueError(f"model {name!r}: the checkpoint lacks part of expert {e} of MoE layer {i} "
                                     f"({p}): found {len(parts)} of {plan.part_count.get((i, p), 1)} tensors")
                out.append(Planned(ExpertStore.key(i, p, e), fused.dtype, tuple(fused.shape[1:]),
                                   _reader(parts, fused.dtype)))
    return out


def _load_dense(model: Any, plan: CheckpointPlan) -> None:
    meta = model.state_dict()
    state = {target: read_range(entry).to(meta[target].dtype) for target, entry in plan.dense.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()


def _check_complete(model: Any, name: str, folder: Path) -> None:
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise ValueError(f"model {name!r}: {folder} lacks {len(missing)} weights the model needs, e.g. "
                         f"{', '.join(missing[:3])}")


def load_offloaded(folder: Path, name: str, dtype: str, resident: int, policy: str,
                   store: Path) -> tuple[Any, ExpertOffload]:
    """Load ``folder`` with its routed experts in ``store``/experts.safetensors (written if missing)."""
    entries = checkpoint_entries(folder, name)
    model = _skeleton(folder, dtype, entries)
    info, layers = moe_layers(model, name, resident)
    plan = plan_checkpoint(model, layers, entries, info.num_experts, name)
    path = store / STORE_FILE
    if not path.is_file():
        write_store(expert_plan(layers, plan, info.num_experts, name), store)
    _load_dense(model, plan)
    offload = install_offload(model, layers, ExpertStore(path), resident, policy, info)
    _check_complete(model, name, folder)
    return model, offload
