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


def _span(entry: Entry, index: int | None) -> tuple[int, int, tuple[int, ...]]:
    """(start, length, shape) of ``entry`` or of its ``[index]`` slice along the first dimension."""
    shape, start, length = entry.shape, entry.start, entry.end - entry.start
    if index is None:
        return start, length, shape
    if not 0 <= index < shape[0]:
        raise ValueError(f"{entry.file}: index {index} outside a tensor of shape {list(shape)}")
    length //= shape[0]
    return start + index * length, length, shape[1:]


def read_into(parts: list[tuple[Entry, int | None]], fd: int | None = None) -> torch.Tensor:
    """The parts (whole tensors or ``[index]`` slices, one dtype) concatenated along their first dimension.

    Contiguous tensors concatenated along dim 0 are their bytes back to back, so each part is read
    straight into its place in one buffer: one allocation, no copy. ``fd``: an open descriptor of the
    parts' file to read with ``pread`` (thread-safe, no seek); else each part's file is opened.
    """
    import torch

    spans = [_span(entry, index) for entry, index in parts]
    dtypes = {entry.dtype for entry, _ in parts}
    if len(dtypes) != 1 or len({shape[1:] for _, _, shape in spans}) != 1:
        raise ValueError(f"{parts[0][0].file}: parts of one tensor differ in dtype or trailing shape")
    shape = (sum(s[0] if s else 1 for _, _, s in spans), *spans[0][2][1:]) if len(parts) > 1 else spans[0][2]
    buffer = bytearray(sum(length for _, length, _ in spans))
    view, at = memoryview(buffer), 0
    for (entry, _), (start, length, _) in zip(parts, spans, strict=True):
        got = _pread(entry.file, view[at:at + length], start, fd)
        if got != length:
            raise ValueError(f"{entry.file}: truncated (a tensor's bytes end past the end of the file)")
        at += length
    dtype = torch_dtype(parts[0][0].dtype)
    if not buffer:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def _pread(path: Path, into: memoryview, start: int, fd: int | None) -> int:
    if fd is not None:
        return os.preadv(fd, [into], start)
    with path.open("rb") as f:
        f.seek(start)
        return f.readinto(into)


def read_range(entry: Entry, index: int | None = None) -> torch.Tensor:
    """The tensor of ``entry`` or, with ``index``, its ``[index]`` slice along the first dimension."""
    return read_into([(entry, index)])


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
