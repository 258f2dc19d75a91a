"""safetensors files read and written one tensor at a time, without memory-mapping them.

``safetensors.torch.save_file`` needs every tensor in memory at once, and ``safe_open`` maps the file:
each page a read touches stays in the process's resident set until the file is closed. Writing the
expert store of a model larger than memory needs the opposite: the header is computed from shapes known
in advance, then each tensor is produced, written and dropped before the next one. Reads here copy one
byte range (one expert's slice) into a fresh buffer with plain file reads, so only that buffer counts.
The format: 8 bytes little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}``
padded with spaces to a multiple of 8, then the tensors' bytes back to back in header order.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
          "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def dtype_code(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"F32"`` (the header's spelling)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _CODES:
        raise ValueError(f"dtype {dtype} cannot be written to a safetensors file here")
    return _CODES[name]


def torch_dtype(code: str) -> torch.dtype:
    import torch

    for name, known in _CODES.items():
        if known == code:
            found: torch.dtype = getattr(torch, name)
            return found
    raise ValueError(f"safetensors dtype {code!r} is not supported here")


@dataclass(frozen=True)
class Entry:
    """One tensor of a checkpoint file: where its bytes lie."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int


def read_header(path: Path) -> dict[str, Entry]:
    """Every tensor of ``path`` by name, with absolute byte offsets (the header alone is read)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    base = 8 + size
    return {name: Entry(path, info["dtype"], tuple(int(d) for d in info["shape"]),
                        base + int(info["data_offsets"][0]), base + int(info["data_offsets"][1]))
            for name, info in header.items() if name != "__metadata__"}


def read_range(entry: Entry, index: int | None = None) -> torch.Tensor:
    """The tensor of ``entry`` or, with ``index``, its ``[index]`` slice along the first dimension."""
    import torch

    shape, start, length = entry.shape, entry.start, entry.end - entry.start
    if index is not None:
        if not 0 <= index < shape[0]:
            raise ValueError(f"{entry.file}: index {index} outside a tensor of shape {list(shape)}")
        length //= shape[0]
        start, shape = start + index * length, shape[1:]
    buffer = bytearray(length)
    with entry.file.open("rb") as f:
        f.seek(start)
        if f.readinto(buffer) != length:
            raise ValueError(f"{entry.file}: truncated (a tensor's bytes end past the end of the file)")
    if not length:
        return torch.empty(shape, dtype=torch_dtype(entry.dtype))
    return torch.frombuffer(buffer, dtype=torch_dtype(entry.dtype)).reshape(shape)


@dataclass(frozen=True)
class Planned:
    """A tensor to write: its name, dtype and shape up front, its values produced when its turn comes."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]


def _header(tensors: list[Planned]) -> bytes:
    offset, header = 0, {}
    for t in tensors:
        size = t.dtype.itemsize
        for dim in t.shape:
            size *= dim
        header[t.name] = {"dtype": dtype_code(t.dtype), "shape": list(t.shape),
                          "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_streamed(path: Path, tensors: Iterable[Planned]) -> None:
    """Write ``tensors`` to ``path`` atomically, holding one of them in memory at a time."""
    planned = list(tensors)
    header = _header(planned)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            for t in planned:
                value = t.produce().detach().contiguous()
                if tuple(value.shape) != t.shape or value.dtype != t.dtype:
                    raise ValueError(f"{path}: tensor {t.name!r} is {value.dtype} {list(value.shape)}, "
                                     f"planned as {t.dtype} {list(t.shape)}")
                f.write(value.reshape(-1).view(_byte_dtype()).numpy().data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _byte_dtype() -> torch.dtype:
    import torch

    return torch.uint8
