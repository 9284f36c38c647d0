"""Length-prefixed JSON frames over pipes (stdlib only).

Frames from a session child are hostile input: the reader caps their size and the server only
ever json-decodes them (never unpickles).
"""

from __future__ import annotations

import json
import os
import struct

_LEN = struct.Struct(">I")


def encode(msg: dict) -> bytes:
  body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
  return _LEN.pack(len(body)) + body


class FrameReader:
  """Incremental decoder: feed bytes, get complete messages. Raises ValueError on a bad frame."""

  def __init__(self, max_frame: int):
    self.max_frame = max_frame
    self.buf = bytearray()

  def feed(self, data: bytes) -> list[dict]:
    self.buf += data
    out = []
    while len(self.buf) >= 4:
      (n,) = _LEN.unpack_from(self.buf)
      if n > self.max_frame:
        raise ValueError(f"frame of {n} bytes exceeds {self.max_frame}")
      if len(self.buf) < 4 + n:
        break
      msg = json.loads(bytes(self.buf[4:4 + n]).decode("utf-8"))
      del self.buf[:4 + n]
      if not isinstance(msg, dict):
        raise ValueError("frame is not an object")
      out.append(msg)
    return out


def read_frame_blocking(fd: int, max_frame: int) -> dict | None:
  """One frame from a blocking fd; None on EOF."""
  def read_exact(n):
    chunks, got = [], 0
    while got < n:
      b = os.read(fd, n - got)
      if not b:
        return None
      chunks.append(b)
      got += len(b)
    return b"".join(chunks)
  head = read_exact(4)
  if head is None:
    return None
  (n,) = _LEN.unpack(head)
  if n > max_frame:
    raise ValueError("frame too large")
  body = read_exact(n)
  return None if body is None else json.loads(body.decode("utf-8"))


def write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    n = os.write(fd, view)
    view = view[n:]
