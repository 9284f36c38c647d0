"""Planning a config on a topology: compile each program, and optionally search the largest
micro-batch, rollout rows and prompt chunk that fit."""

from __future__ import annotations

import dataclasses
from typing import Callable

from aci_jax.plan.chips import chip_for, topology_devices
from aci_jax.plan.compiler import Compiled, compile_program
from aci_jax.plan.programs import decode_program, extend_program, train_program
from aci_jax.plan.report import Plan
from aci_jax.plan.setup import Setup, setup_from_config

# The programs a plan can compile, by name, in the order it compiles them.
BUILDERS = {"train": train_program, "extend": extend_program, "decode": decode_program}
PROGRAMS = tuple(BUILDERS)


def plan(config, topology: str, *, programs=PROGRAMS, search: bool = False,
         live_tokens: int | None = None, log: Callable[[str], None] = lambda m: None) -> Plan:
  """Compiles `programs`; `live_tokens` overrides the live KV length decode is counted at."""
  devices = topology_devices(topology)
  s = setup_from_config(config, devices)
  if live_tokens:
    s = dataclasses.replace(s, live_tokens=live_tokens)
  out = {}
  for name in programs:
    log(f"compiling {name} ...")
    fn, args = BUILDERS[name](s)
    out[name] = compile_program(name, fn, args, len(devices),
                                counted_live_tokens(s, name))
    log(f"  {name}: {'fits' if out[name].fits else 'does NOT fit'} "
        f"({out[name].seconds:.0f} s)")
  p = Plan(topology, len(devices), dict(s.mesh.shape), chip_for(topology), s.model, s, out)
  if search:
    p.search = search_limits(s, out, len(devices), log, programs)
  return p


def counted_live_tokens(s: Setup, name: str) -> int:
  """The live KV length a program's attention reads: decode, the setup's assumed live length;
  extend, the prompt chunk written into empty rows."""
  live = s.live_tokens if name == "decode" else s.prompt_chunk
  return min(live, s.capacity)


def _fits(name: str, fn, args, n: int) -> bool:
  return compile_program(name, fn, args, n).fits


def search_limits(s: Setup, done: dict[str, Compiled], n: int, log,
                  programs=PROGRAMS) -> dict:
  """Largest train micro-batch (rows per optimizer micro-step), rollout rows and prompt chunk
  that compile within HBM, by doubling/halving from the config's values, for the `programs`
  planned (rows: up to 64x the config's, as far as a paged KV pool lets them grow)."""
  dp = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  out = {}
  if "train" in programs:
    out.update(_search_train(s, done, n, log, dp))
  if "decode" in programs:
    done_fit = {("decode", s.rollout_rows): done["decode"].fits} if "decode" in done else {}
    rows = _grow("decode", s.rollout_rows, dp, lambda r: decode_program(s, rows=r),
                 s.rollout_rows * 64, done_fit, n, log)
    out["rollout rows (decode)"] = rows or "none"
  if "extend" in programs:
    done_fit = {("extend", s.prompt_chunk): done["extend"].fits} if "extend" in done else {}
    chunk = _grow("extend", s.prompt_chunk, 16, lambda c: extend_program(s, chunk=c),
                  s.prompt_chunk, done_fit, n, log)
    out[f"prompt chunk (extend, {s.rollout_rows} rows)"] = chunk or "none"
  return out


def _search_train(s: Setup, done: dict[str, Compiled], n: int, log, dp: int) -> dict:
  """The largest train micro-batch that fits (fewest micro-batches)."""
  # Train: micro-batch rows = batch / micro_batches; try fewer / more micro-batches.
  ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if s.train_rows % (k * dp) == 0]
  fits_k = {}
  if "train" in done:
    fits_k[s.step.micro_batches] = done["train"].fits

  def train_fits(k):
    if k not in fits_k:
      log(f"  search: train with {k} micro-batches ...")
      fits_k[k] = _fits("train", *train_program(s, micro_batches=k), n)
    return fits_k[k]

  best = None
  for k in ks:  # fewest micro-batches (largest micro-batch) first
    if k < s.step.micro_batches and fits_k.get(s.step.micro_batches) is False:
      continue
    if train_fits(k):
      best = k
      break
  return {"train micro-batch": (f"{s.train_rows // best} rows x {s.train_len} tokens "
                                f"(micro_batches={best})" if best else "none")}


def _grow(name, start, lo, build, limit, done_fit, n, log) -> int:
  """The largest size that fits, doubling from `start` (at most `limit`) or halving (at least
  `lo`); 0 if none. `done_fit`: {(name, size): fits} already compiled."""
  fits = {}
  if (name, start) in done_fit:
    fits[start] = done_fit[(name, start)]
  cur = start
  if cur not in fits:
    fits[cur] = _fits(name, *build(cur), n)
  if fits[cur]:
    while cur * 2 <= limit:
      log(f"  search: {name} {cur * 2} ...")
      if not _fits(name, *build(cur * 2), n):
        break
      cur *= 2
    return cur
  while cur // 2 >= lo:
    cur //= 2
    log(f"  search: {name} {cur} ...")
    if _fits(name, *build(cur), n):
      return cur
  return 0

