"""Run metrics: scalars to TensorBoard and to `<workdir>/metrics.jsonl`, from process 0 only.

Each JSONL line is {"step": int, "<name>": float, ...}. On resume the JSONL file is rewritten
from the metrics history stored in the checkpoint (`reset`), so lines logged after the last
checkpoint by a killed run disappear and the file equals that of an uninterrupted run.
TensorBoard event files are append-only; TensorBoard itself shows the latest value written for a
step, so re-logged steps after a resume simply overwrite the view.

A remote workdir (gs://) cannot be appended to: both files are then written to a local mirror
directory and copied to the workdir as whole objects by `sync()`, which runs at most every
`sync_seconds` from `write`, and always from `reset`, `close` and every checkpoint save
(Trainer.save). After a preemption the bucket therefore holds the metrics up to at least the
last checkpoint, which is all that a resume keeps anyway.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from typing import Iterable, Mapping

import jax

from aci_jax import fileio

log = logging.getLogger(__name__)

JSONL = "metrics.jsonl"


def _tb_writer(logdir: str):
  """TensorBoard's own event writer (no TensorFlow needed); None if tensorboard is missing."""
  try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
  except ImportError:  # pragma: no cover - depends on the environment
    log.warning("tensorboard is not installed; metrics go to %s only", JSONL)
    return None
  writer = EventFileWriter(logdir)

  def write(step: int, scalars: Mapping[str, float]):
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                     summary=summary_pb2.Summary(value=values)))

  write.flush = writer.flush
  write.close = writer.close
  return write


def _clean(v):
  v = float(v)
  return v if math.isfinite(v) else None  # JSON has no NaN/inf; null means "not defined"


class MetricsWriter:
  """`write(step, {name: scalar})`; a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, sync_seconds: float = 60.0):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.remote = fileio.is_remote(workdir)
    self.sync_seconds = sync_seconds
    self._tb = None
    self._last_sync = time.monotonic()
    # Where the files are written: the workdir itself, or a local mirror of a remote one.
    self.local = fileio.local_mirror() if self.remote and self.active else workdir
    self.path = os.path.join(self.local, JSONL)
    if self.active:
      os.makedirs(self.local, exist_ok=True)
      if self.remote and fileio.exists(fileio.join(workdir, JSONL)):
        fileio.write_text(self.path, fileio.read_text(fileio.join(workdir, JSONL)))
      if tensorboard:
        self._tb = _tb_writer(os.path.join(self.local, "tb"))

  def write(self, step: int, scalars: Mapping[str, float]) -> dict:
    """Logs one step; returns the JSON record (floats; NaN/inf as None)."""
    record = {"step": int(step), **{k: _clean(v) for k, v in sorted(scalars.items())}}
    if not self.active:
      return record
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      self._tb(step, {k: v for k, v in scalars.items() if math.isfinite(float(v))})
      self._tb.flush()
    if self.remote and time.monotonic() - self._last_sync >= self.sync_seconds:
      self.sync()
    return record

  def reset(self, history: Iterable[Mapping]) -> None:
    """Makes metrics.jsonl hold exactly `history` (atomically)."""
    if not self.active:
      return
    fileio.write_jsonl(self.path, (dict(record) for record in history))
    self.sync()

  def sync(self) -> None:
    """Copies metrics.jsonl and the TensorBoard event files of a remote workdir to it."""
    if not (self.active and self.remote):
      return
    if os.path.exists(self.path):
      fileio.upload_file(self.path, fileio.join(self.workdir, JSONL))
    tb = os.path.join(self.local, "tb")
    for name in sorted(os.listdir(tb)) if os.path.isdir(tb) else []:
      fileio.upload_file(os.path.join(tb, name), fileio.join(self.workdir, "tb", name))
    self._last_sync = time.monotonic()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.sync()
    if self.active and self.remote:  # the bucket has everything: drop the local mirror
      shutil.rmtree(self.local, ignore_errors=True)
      self.active = False  # later writes would have nowhere to go


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl (local or remote)."""
  with fileio.open_read(path) as f:
    return [json.loads(line) for line in f if line.strip()]
