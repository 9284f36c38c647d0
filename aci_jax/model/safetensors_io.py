"""Minimal safetensors reader/writer on numpy memory maps.

Why not `safetensors.safe_open`: we need (a) zero-copy slices of bfloat16 tensors as numpy
arrays so each device reads only its own shard of a weight, and (b) a streaming writer that
exports a 7B model one tensor at a time without holding the whole state dict in host memory.
The format is simple: an 8-byte little-endian header length, a JSON header mapping names to
dtype/shape/byte offsets, then the raw little-endian data.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint directory or file is malformed; the message names the offending tensors."""


class SafetensorsFile:
  """Read-only view of one .safetensors file; `get(name)` is a lazy numpy memmap view."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 2**20:
          raise CheckpointError(f"{path}: header length {n} is implausible; not safetensors?")
        header = json.loads(f.read(n))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    self.metadata = header.pop("__metadata__", {}) or {}
    self._header = header
    self._data_start = 8 + n
    self._mmap = None

  def keys(self) -> list[str]:
    return list(self._header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._header[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    code = self._header[name]["dtype"]
    if code not in _DTYPES:
      raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {code}")
    return _DTYPES[code]

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only memmap view (no bytes are read until sliced/used)."""
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    entry = self._header[name]
    start, end = entry["data_offsets"]
    dtype = self.dtype(name)
    shape = tuple(entry["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - start != expected or self._data_start + end > self._mmap.size:
      raise CheckpointError(f"{self.path}: tensor {name} has inconsistent offsets")
    raw = self._mmap[self._data_start + start:self._data_start + end]
    return raw.view(dtype).reshape(shape)


def write_safetensors(path: str, tensors: Iterable[tuple[str, np.ndarray]] | Mapping,
                      shapes: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None,
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors to `path` atomically (temp file + rename).

  With `shapes` given up front ({name: (shape, dtype)}), `tensors` may be a generator and each
  array is written and dropped before the next is produced (streaming export).
  """
  if isinstance(tensors, Mapping):
    tensors = dict(tensors)
    shapes = {k: (v.shape, v.dtype) for k, v in tensors.items()}
    tensors = tensors.items()
  assert shapes is not None, "streaming write needs shapes"
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, (shape, dtype) in shapes.items():
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    written = 0
    for (name, arr), expected in zip(tensors, shapes):
      if name != expected:
        raise ValueError(f"tensors must come in the order of `shapes`: got {name}, "
                         f"expected {expected}")
      written += 1
      shape, dtype = shapes[name]
      arr = np.ascontiguousarray(np.asarray(arr))
      if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: got {arr.shape} {arr.dtype}, declared {shape} {dtype}")
      f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    if written != len(shapes):
      raise ValueError(f"wrote {written} of {len(shapes)} declared tensors")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
