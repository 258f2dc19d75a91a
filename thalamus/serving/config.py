"""Settings of the local server, read from a YAML file (``thalamus serve-local --config local.yaml``).

The server owns a fixed list of models by name; a request naming anything else gets a 404. Sizes accept
plain bytes or strings such as ``"2GiB"`` / ``"500MB"``, since a memory budget is easier to read that way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thalamus.errors import ConfigError
from thalamus.serving.machine import DTYPES, resolve_dtype

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SOURCES = ("smollm2",)


def parse_bytes(value: int | float | str) -> int:
    """``1073741824``, ``"1GiB"``, ``"1.5 GB"`` -> bytes."""
    if isinstance(value, int | float):
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; use bytes or a number with KB/MB/GB/KiB/MiB/GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k")
_N_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class OffloadSpec(BaseModel):
    """Expert offloading of an MoE model: ``experts_resident`` experts per layer in memory, the rest on disk."""

    model_config = ConfigDict(extra="forbid")

    experts_resident: int = Field(ge=1, description="experts of each MoE layer kept in memory")
    policy: Literal["lru", "lfu", "predict"] = "lru"


def routing_of(folder: Path) -> tuple[int, int] | None:
    """(top_k, num_experts) from a model folder's config.json; None when it is missing or not an MoE."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    top_k = next((raw[k] for k in _TOP_K_KEYS if isinstance(raw.get(k), int)), None)
    n = next((raw[k] for k in _N_EXPERT_KEYS if isinstance(raw.get(k), int)), None)
    return (top_k, n) if top_k is not None and n is not None else None


class VllmSpec(BaseModel):
    """How to run an ``engine: vllm`` model: the vLLM environment (scripts/vllm_env.sh) and its settings."""

    model_config = ConfigDict(extra="forbid")

    python: Path = Field(description="the vLLM environment's python, e.g. /work/vllm-venv/bin/python")
    kv_cache_space: int = Field(default=2 * 2**30, gt=0, description="KV cache bytes (VLLM_CPU_KVCACHE_SPACE, "
                                                                     "rounded up to whole GiB)")
    extra_args: list[str] = Field(default_factory=list, description="more api_server arguments")
    start_timeout_s: float = Field(default=300.0, gt=0, description="longest wait for a (re)start")
    health_interval_s: float = Field(default=2.0, gt=0, description="seconds between health checks")

    @field_validator("kv_cache_space", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_bytes(value)

    @field_validator("python", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class ModelSpec(BaseModel):
    """One servable model: a local Hugging Face folder (``path``) or a prepared ``source``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: Path | None = None
    source: str | None = None
    dtype: str | None = Field(default=None, description="None: the server's default_dtype")
    context_length: int | None = Field(default=None, gt=0)
    offload: OffloadSpec | None = None
    engine: Literal["torch", "vllm"] = "torch"
    vllm: VllmSpec | None = None

    @model_validator(mode="after")
    def _one_location(self) -> ModelSpec:
        if (self.path is None) == (self.source is None):
            raise ValueError(f"model {self.name!r}: give exactly one of 'path' or 'source'")
        if self.source is not None and self.source not in SOURCES:
            raise ValueError(f"model {self.name!r}: unknown source {self.source!r}; known: {SOURCES}")
        if self.path is not None:
            self.path = self.path.expanduser()
        if self.offload is not None:
            self._check_offload(self.offload)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"model {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")
        if (self.engine == "vllm") != (self.vllm is not None):
            raise ValueError(f"model {self.name!r}: 'engine: vllm' and a 'vllm:' section (with the vLLM "
                             "environment's python) go together")
        if self.engine == "vllm" and self.offload is not None:
            raise ValueError(f"model {self.name!r}: expert offloading is a torch-engine feature; "
                             "drop 'offload' or use 'engine: torch'")
        return self

    def _check_offload(self, offload: OffloadSpec) -> None:
        """Checked here when the folder is readable; the pool checks again against the loaded model."""
        if self.source is not None:
            raise ValueError(f"model {self.name!r}: offload needs an MoE model folder ('path'); "
                             f"source {self.source!r} is a dense model")
        assert self.path is not None
        if not (self.path / "config.json").is_file():
            return  # the folder may appear later; loading reports what is wrong with it
        routing = routing_of(self.path)
        if routing is None:
            raise ValueError(f"model {self.name!r}: offload is set but {self.path}/config.json describes no "
                             "MoE model (no experts per token / number of experts)")
        top_k, n = routing
        if not top_k <= offload.experts_resident <= n:
            raise ValueError(f"model {self.name!r}: offload.experts_resident={offload.experts_resident} must "
                             f"be between the model's top_k ({top_k}) and num_experts ({n})")


class ServingConfig(BaseModel):
    """Everything ``serve-local`` needs; see examples/local.yaml."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8001
    memory_budget: int = Field(default=4 * 2**30, gt=0, description="bytes of model weights kept loaded")
    batching: bool = True
    batch_mode: Literal["continuous", "window"] = Field(
        default="continuous", description="continuous: requests join the running batch at the next step; "
                                          "window: batches gathered per window run to the end")
    batch_window_ms: float = Field(default=5.0, ge=0)
    max_batch_size: int = Field(default=8, ge=1)
    max_queued: int = Field(default=64, ge=0, description="requests that may wait for a batch slot (per model) "
                                                          "or for room in the memory budget; 503 beyond")
    queue_timeout_s: float = Field(default=30.0, gt=0, description="longest wait in a queue before a 503")
    default_max_tokens: int = Field(default=256, ge=1)
    max_prompt_chars: int = Field(default=1_000_000, ge=1,
                                  description="characters of message text a request may carry (413 above)")
    max_request_bytes: int = Field(default=16 * 2**20, gt=0, description="bytes of a request body (413 above)")
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads (None: the "
                                                                      "cores this process may use)")
    default_dtype: str = Field(default="float32", description="dtype of models that name none; 'machine': "
                                                              "bfloat16 where the CPU has bf16 instructions")
    models: list[ModelSpec]

    @field_validator("memory_budget", "max_request_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_bytes(value)

    @model_validator(mode="after")
    def _unique(self) -> ServingConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {dupes}")
        if self.default_dtype not in DTYPES:
            raise ValueError(f"default_dtype {self.default_dtype!r} is not one of {DTYPES}")
        for spec in self.models:  # from here on every model names a concrete dtype
            spec.dtype = resolve_dtype(spec.dtype or self.default_dtype)
        return self

    def dtype_of(self, spec: ModelSpec) -> str:
        """The resolved dtype of ``spec`` (always set once the config has validated)."""
        return spec.dtype or resolve_dtype(self.default_dtype)

    @classmethod
    def from_yaml(cls, path: Path) -> ServingConfig:
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read serving config: {exc}") from exc
        return cls.from_dict(raw or {}, origin=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], origin: str = "config") -> ServingConfig:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{origin}: key {key!r}: {first['msg']}") from exc
