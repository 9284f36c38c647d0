"""Run metrics: scalars to TensorBoard and to `<workdir>/metrics.jsonl`, from process 0 only.

Each JSONL line is {"step": int, "<name>": float, ...}. On resume the JSONL file is rewritten
from the metrics history stored in the checkpoint (`reset`), so lines logged after the last
checkpoint by a killed run disappear and the file equals that of an uninterrupted run.
TensorBoard event files are append-only; TensorBoard itself shows the latest value written for a
step, so re-logged steps after a resume simply overwrite the view.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Iterable, Mapping

import jax

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

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, JSONL)
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        self._tb = _tb_writer(os.path.join(workdir, "tb"))

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
    return record

  def reset(self, history: Iterable[Mapping]) -> None:
    """Makes metrics.jsonl hold exactly `history` (atomically)."""
    if not self.active:
      return
    tmp = f"{self.path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      for record in history:
        f.write(json.dumps(dict(record)) + "\n")
    os.replace(tmp, self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
