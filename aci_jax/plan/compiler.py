"""Compiling one program for abstract devices: the compiler's memory figures and the program's
counted cost, or its refusal when the program does not fit HBM (what "fits" means here)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

from aci_jax.plan.traffic import Cost, hlo_cost, largest_buffers


@dataclasses.dataclass
class Compiled:
  """What one compile told us about one program, per chip."""

  name: str
  fits: bool
  seconds: float
  memory_bytes: float = 0.0  # arguments + outputs - aliased + temporaries
  argument_bytes: float = 0.0
  temp_bytes: float = 0.0
  cost: Cost | None = None
  cost_once: Cost | None = None
  xla_flops: float = 0.0  # cost_analysis() (loop bodies once), for comparison
  largest: list = dataclasses.field(default_factory=list)
  error: str = ""


def _exhausted(e: BaseException) -> str | None:
  msg = str(e)
  if "RESOURCE_EXHAUSTED" in msg or "exceeds" in msg and "HBM" in msg:
    return msg
  return None


def compile_program(name: str, fn, args, num_devices: int,
                    live_tokens: int | None = None) -> Compiled:
  """Compiles `fn` for `args`; `live_tokens` is the live KV length its loops over live KV
  blocks are counted for (`traffic.hlo_cost`)."""
  t0 = time.perf_counter()
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # noqa: BLE001 - the compiler's refusal is the answer
    msg = _exhausted(e)
    if msg is None:
      raise
    args_b = argument_bytes(args)
    # The refusal names only the total, not the buffers (compile a smaller variant with
    # --search, or the same set-up on a larger chip, to see them).
    return Compiled(name, False, time.perf_counter() - t0, error=_oom_line(msg),
                    memory_bytes=args_b + _oom_used(msg), argument_bytes=args_b,
                    temp_bytes=_oom_used(msg))
  dt = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  if os.environ.get("ACI_PLAN_DUMP"):  # the optimised HLO, for reading what the figures count
    with open(os.path.join(os.environ["ACI_PLAN_DUMP"], f"{name}.hlo.txt"), "w") as f:
      f.write(text)
  cost, once = hlo_cost(text, num_devices, live_tokens)
  ca = compiled.cost_analysis() or {}
  if isinstance(ca, list):
    ca = ca[0] if ca else {}
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes)
  return Compiled(name, True, dt, memory_bytes=total, argument_bytes=mem.argument_size_in_bytes,
                  temp_bytes=mem.temp_size_in_bytes, cost=cost, cost_once=once,
                  xla_flops=float(ca.get("flops", 0.0)), largest=largest_buffers(text))


def _oom_line(msg: str) -> str:
  for line in msg.splitlines():
    if "exceeds" in line or "RESOURCE_EXHAUSTED" in line:
      return line.strip()[:300]
  return msg.splitlines()[0][:300]


_SCALE = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _oom_used(msg: str) -> float:
  """Temporaries the compiler needed, from "... HLO temporaries (33.80G) exceeds ..."."""
  m = re.search(r"temporaries \(([0-9.]+)([KMGT]?)\)", msg)
  if not m:
    return float("nan")
  return float(m.group(1)) * _SCALE[m.group(2)]


def argument_bytes(args) -> float:
  """Per-device bytes of abstract (sharded) arguments: the inputs a program holds in HBM."""
  import jax
  import numpy as np
  total = 0.0
  for a in jax.tree.leaves(args):
    shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) else a.shape
    total += math.prod(shape) * np.dtype(a.dtype).itemsize
  return total
