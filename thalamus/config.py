"""Process settings (environment variables prefixed THALAMUS_); never instantiated at import.

THALAMUS_DATA_DIR    where named datasets live (default: ../shared/data beside the repo)
THALAMUS_CACHE_DIR   embedding cache, prepared models, cached artifacts (default ~/.cache/thalamus)
THALAMUS_SEED        seed of `thalamus demo` (its split and held-out sample; default 0); eval/train take --seed
THALAMUS_EMBED_CACHE 0 turns the on-disk embedding cache off (default 1)
THALAMUS_TORCH_THREADS  torch threads for mf/bert training (default 2)
THALAMUS_MINILM_BACKEND torch (default) or onnx: the runtime of the minilm embedder (same vectors)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THALAMUS_", extra="ignore")

    data_dir: Path = Field(default=REPO_ROOT.parent / "shared" / "data")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "thalamus")
    seed: int = 0
    minilm_backend: Literal["torch", "onnx"] = "torch"
