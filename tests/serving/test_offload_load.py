"""Loading an offloaded MoE straight from its checkpoint: exact, and without ever holding all its experts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from thalamus.serving.models import TINY_MOE_ARCHS
from thalamus.serving.offload import STORE_FILE, attach_offload
from thalamus.serving.offload_load import load_offloaded
from thalamus.serving.tensorfile import read_header

LAYERS, EXPERTS, NEW_TOKENS = 2, 4, 12


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _greedy(model: Any) -> Any:
    import torch

    ids = torch.randint(5, 30_000, (2, 20), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    ids[1, :7], mask[1, :7] = 0, 0
    with torch.inference_mode():
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              min_new_tokens=NEW_TOKENS)


def _resident(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _store_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / STORE_FILE))


@pytest.mark.parametrize("arch", TINY_MOE_ARCHS)
def test_loaded_from_the_checkpoint_matches_the_resident_model(arch: str, tiny_dir: Path, tmp_path: Path) -> None:
    import torch

    folder = tiny_dir / f"tiny-{arch}"
    reference = _resident(folder)
    want = _greedy(reference)
    attach_offload(copy.deepcopy(reference), arch, 2, "lru", tmp_path / "from-model").close()
    for policy, resident in (("lru", 2), ("predict", 3), ("lfu", 4)):
        store = tmp_path / "from-checkpoint"
        model, offload = load_offloaded(folder, arch, "float32", resident, policy, store)
        assert torch.equal(_greedy(model), want), (policy, resident)
        assert all(len(cache.resident) <= resident for cache in offload.caches)
        assert not model.training and not any(layer.experts.training for layer in offload.layers)
        offload.close()
    # the store written expert by expert from the checkpoint holds exactly what the loaded model held
    written, expected = _store_tensors(tmp_path / "from-checkpoint"), _store_tensors(tmp_path / "from-model")
    assert sorted(written) == sorted(expected) and len(written) == LAYERS * 2 * EXPERTS
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    dense = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}
    got = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert sorted(got) == sorted(k for k in dense if ".experts." not in k)
    assert all(torch.equal(got[k], dense[k]) and not got[k].is_meta for k in got)


def test_bfloat16_and_auto_dtypes(tiny_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_dir / "tiny-qwen2_moe"
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    model, offload = load_offloaded(folder, "q", "bfloat16", 2, "lru", tmp_path)
    assert torch.equal(_greedy(model), _greedy(reference))
    assert {t.dtype for t in _store_tensors(tmp_path).values()} == {torch.bfloat16}
    offload.close()
    model, offload = load_offloaded(folder, "q", "auto", 2, "lru", tmp_path / "auto")  # as stored: float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {t.dtype for t in _store_tensors(tmp_path / "auto").values()} == {torch.float32}
    offload.close()


def _fused_checkpoint(source: Path, out: Path) -> Path:
    """The same model saved under its in-memory names: experts as fused [num_experts, ...] tensors."""
    import shutil

    from safetensors.torch import save_file

    model = _resident(source)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, out / name)
    return out


def test_fused_checkpoint_loads_exactly(tiny_dir: Path, tmp_path: Path) -> None:
    import torch

    folder = _fused_checkpoint(tiny_dir / "tiny-olmoe", tmp_path / "fused")
    assert any(e.shape[:1] == (EXPERTS,) for k, e in read_header(folder / "model.safetensors").items()
               if k.endswith("experts.gate_up_proj"))
    model, offload = load_offloaded(folder, "fused", "float32", 2, "lfu", tmp_path / "store")
    assert torch.equal(_greedy(model), _greedy(_resident(tiny_dir / "tiny-olmoe")))
    offload.close()


def _rewrite_without(source: Path, out: Path, drop: str) -> Path:
    import shutil

    from safetensors.torch import load_file, save_file

    state = load_file(str(source / "model.safetensors"))
    assert drop in state, drop
    del state[drop]
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(source / "config.json", out / "config.json")
    return out


def test_incomplete_or_unsupported_checkpoints_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    mixtral = tiny_dir / "tiny-mixtral"
    no_expert = _rewrite_without(mixtral, tmp_path / "a", "model.layers.1.block_sparse_moe.experts.2.w3.weight")
    with pytest.raises(ValueError, match=r"model 'm': the checkpoint lacks part of expert 2 of MoE layer 1 "
                                         r"\(gate_up_proj\): found 1 of 2 tensors"):
        load_offloaded(no_expert, "m", "float32", 2, "lru", tmp_path / "sa")
    assert not (tmp_path / "sa" / STORE_FILE).exists()  # no half-written store
    no_norm = _rewrite_without(mixtral, tmp_path / "b", "model.layers.0.input_layernorm.weight")
    with pytest.raises(ValueError, match=r"model 'm': .* lacks 1 weights the model needs, e.g. "
                                         r"model.layers.0.input_layernorm.weight"):
        load_offloaded(no_norm, "m", "float32", 2, "lru", tmp_path / "sb")
    with pytest.raises(ValueError, match="model 'd': offload is configured but the model has no MoE layers"):
        load_offloaded(tiny_dir / "broken", "d", "float32", 2, "lru", tmp_path / "sc")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((mixtral / "config.json").read_text())
    with pytest.raises(ValueError, match="model 'b': offloaded loading reads safetensors checkpoints"):
        load_offloaded(tmp_path / "bin", "b", "float32", 2, "lru", tmp_path / "sd")
    with pytest.raises(ValueError, match=r"offload.experts_resident=1 must be between the model's top_k \(2\)"):
        load_offloaded(mixtral, "m", "float32", 1, "lru", tmp_path / "se")


# --- peak memory -------------------------------------------------------------------------------------

HIDDEN, INTER, BIG_EXPERTS = 256, 1024, 8
EXPERT_BYTES = LAYERS * BIG_EXPERTS * 3 * INTER * HIDDEN * 4  # 50 MiB of experts; the rest is ~2 MiB

# ru_maxrss cannot be reset and imports peak higher than a small load; Linux resets VmHWM (the peak
# resident set) when "5" is written to clear_refs, so the peak is measured from just before the load.
_MEASURE = """
import re, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, MixtralConfig
from thalamus.serving.offload_load import load_offloaded
torch.set_num_threads(1)
folder, mode, store = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
warm = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1)
AutoModelForCausalLM.from_config(warm)  # imports and first-call allocations before the baseline
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
Path("/proc/self/clear_refs").write_text("5")
before = peak()
if mode == "full":
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
else:
    model, offload = load_offloaded(folder, "big", "float32", 2, "lru", store)
print(peak() - before)
"""


@pytest.fixture(scope="module")
def big_experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Mixtral whose 16 experts (3 MiB each) are 96% of its weights; no tokenizer needed."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    config = MixtralConfig(vocab_size=512, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=BIG_EXPERTS,
                           num_experts_per_tok=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("big-experts")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _peak_growth(folder: Path, mode: str, store: Path) -> int:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), mode, str(store)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resets the peak RSS through /proc")
def test_offloaded_load_never_holds_the_experts(big_experts: Path, tmp_path: Path) -> None:
    """Peak RSS growth of a load (store written on the way) stays far below the experts' bytes."""
    weights = sum(e.end - e.start for e in read_header(big_experts / "model.safetensors").values())
    assert 0.9 * weights < EXPERT_BYTES
    full = _peak_growth(big_experts, "full", tmp_path / "unused")
    cold = _peak_growth(big_experts, "offload", tmp_path / "store")
    warm = _peak_growth(big_experts, "offload", tmp_path / "store")
    assert (tmp_path / "store" / STORE_FILE).stat().st_size > EXPERT_BYTES
    report = json.dumps({"expert_bytes": EXPERT_BYTES, "full": full, "offload_cold": cold, "offload_warm": warm})
    assert full >= EXPERT_BYTES, report  # the measurement sees a full load
    assert cold < EXPERT_BYTES / 4, report  # two experts per layer resident, caches filled lazily
    assert warm < EXPERT_BYTES / 4, report
