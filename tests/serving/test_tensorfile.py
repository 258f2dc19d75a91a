"""The streamed safetensors writer and the byte-range reader agree with the safetensors library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thalamus.serving.tensorfile import Planned, read_header, read_into, read_range, write_streamed


def _tensors() -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, 7, generator=generator), "b": torch.randn(4, 2).to(torch.bfloat16),
            "c": torch.arange(5, dtype=torch.int64), "d": torch.zeros(0, 3)}


def _const(tensor: Any) -> Callable[[], Any]:
    return lambda: tensor


def test_streamed_file_reads_back_with_safetensors_and_by_range(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = _tensors()
    plan = [Planned(k, t.dtype, tuple(t.shape), _const(t)) for k, t in tensors.items()]
    write_streamed(tmp_path / "s.safetensors", plan)
    back = load_file(str(tmp_path / "s.safetensors"))
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    save_file(tensors, str(tmp_path / "lib.safetensors"))
    entries = read_header(tmp_path / "lib.safetensors")
    assert all(torch.equal(read_range(entries[k]), tensors[k]) for k in tensors)
    a = tensors["a"]
    assert torch.equal(read_range(entries["a"], 2), a[2])
    # two slices concatenated along dim 0, read into one buffer: what torch.cat gives
    assert torch.equal(read_into([(entries["a"], 1), (entries["a"], 0)]), torch.cat([a[1], a[0]]))
    with pytest.raises(ValueError, match="index 3 outside a tensor of shape"):
        read_range(entries["a"], 3)
    with pytest.raises(ValueError, match="parts of one tensor differ in dtype"):
        read_into([(entries["a"], 0), (entries["b"], None)])


def test_a_wrong_tensor_leaves_no_file(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "s.safetensors"
    plan = [Planned("x", torch.float32, (2, 2), lambda: torch.zeros(2, 2)),
            Planned("y", torch.float32, (2, 2), lambda: torch.zeros(2, 3))]
    with pytest.raises(ValueError, match=r"tensor 'y' is torch.float32 \[2, 3\], planned as torch.float32 \[2, 2\]"):
        write_streamed(path, plan)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_named(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    entries = read_header(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(ValueError, match=f"{path}: truncated"):
        read_range(entries["w"])
