"""A plan's figures: the roofline of each compiled program, its JSON form and its table."""

from __future__ import annotations

import dataclasses
from typing import Any

from aci_jax.plan.chips import Chip, GiB
from aci_jax.plan.compiler import Compiled
from aci_jax.plan.setup import Setup


def _itemsize(dtype) -> int:
  import numpy as np
  return np.dtype(dtype).itemsize


@dataclasses.dataclass
class Plan:
  """The compiled programs of one config on one topology, and what `--search` found."""

  topology: str
  chips: int
  mesh: dict
  chip: Chip
  model: Any
  setup: Setup
  programs: dict[str, Compiled]
  search: dict = dataclasses.field(default_factory=dict)

  def decode_floor_bytes(self) -> float:
    """The physical minimum a decode step reads per chip: the sampling copy of the weights
    (compute dtype, split over every chip) and the rows' live KV at `setup.live_tokens`."""
    m, s = self.model, self.setup
    width = _itemsize(m.compute_dtype)
    weights = m.num_params() * width
    kv = (s.rollout_rows * min(s.live_tokens, s.capacity) * m.num_layers * 2 * m.num_kv_heads * m.head_dim
          * width)
    return (weights + kv) / self.chips

  def roofline(self, name: str) -> dict:
    c = self.programs[name]
    if not c.fits or c.cost is None:
      return {}
    ch = self.chip
    t_flops = c.cost.flops / ch.bf16_flops
    t_hbm = c.cost.hbm_bytes / ch.hbm_bw
    t_ici = c.cost.ici_bytes / ch.ici_bw
    t = max(t_flops, t_hbm, t_ici)
    bound = {t_flops: "compute", t_hbm: "HBM", t_ici: "ICI"}[t]
    out = {"time_s": t, "bound": bound, "t_flops": t_flops, "t_hbm": t_hbm, "t_ici": t_ici}
    s = self.setup
    n = self.model.num_params()
    if name == "train":
      tokens = s.train_rows * s.train_len
      model_flops = 6.0 * n * tokens / self.chips  # per chip; 6N per token, no remat
      out["mfu"] = model_flops / (t * ch.bf16_flops) if t else 0.0
      out["tokens_per_s"] = tokens / t if t else 0.0
    elif name == "decode":
      per_step = t / s.decode_steps
      out["step_s"] = per_step
      out["tokens_per_s"] = s.rollout_rows / per_step if per_step else 0.0
      floor = self.decode_floor_bytes()
      out["hbm_bytes_per_step"] = c.cost.hbm_bytes / s.decode_steps
      out["floor_bytes_per_step"] = floor
      out["x_floor"] = out["hbm_bytes_per_step"] / floor
    elif name == "extend":
      out["tokens_per_s"] = s.rollout_rows * s.prompt_chunk / t if t else 0.0
    return out

  def to_dict(self) -> dict:
    progs = {}
    for name, c in self.programs.items():
      d = {"fits": c.fits, "compile_s": round(c.seconds, 1), "memory_bytes": c.memory_bytes,
           "largest": c.largest, "error": c.error}
      if c.cost:
        d.update(flops=c.cost.flops, hbm_bytes=c.cost.hbm_bytes, ici_bytes=c.cost.ici_bytes,
                 collectives=c.cost.collectives, flops_once=c.cost_once.flops,
                 xla_flops=c.xla_flops, argument_bytes=c.argument_bytes,
                 temp_bytes=c.temp_bytes)
      d.update(self.roofline(name))
      progs[name] = d
    return {"topology": self.topology, "chips": self.chips, "mesh": self.mesh,
            "chip": dataclasses.asdict(self.chip), "params": self.model.num_params(),
            "train": {"rows": self.setup.train_rows, "len": self.setup.train_len,
                      "micro_batches": self.setup.step.micro_batches},
            "rollout": {"rows": self.setup.rollout_rows, "capacity": self.setup.capacity,
                        "prompt_chunk": self.setup.prompt_chunk,
                        "decode_steps": self.setup.decode_steps,
                        "live_tokens": self.setup.live_tokens},
            "programs": progs, "search": self.search}


def _gb(x: float) -> str:
  return "n/a" if x != x else f"{x / 1e9:.1f} GB"


def format_plan(p: Plan) -> str:
  s = p.setup
  lines = [f"plan: {p.model.arch} {p.model.num_params() / 1e9:.2f}B params on {p.topology} "
           f"({p.chips} x {p.chip.name}, {p.chip.hbm_bytes / GiB:.0f} GiB HBM each), mesh "
           + " ".join(f"{k}={v}" for k, v in p.mesh.items()),
           f"  train: {s.train_rows} x {s.train_len} tokens, {s.step.micro_batches} "
           f"micro-batches, remat={p.model.remat}; rollout: {s.rollout_rows} rows x "
           f"{s.capacity} slots, prompt chunk {s.prompt_chunk}, {s.decode_steps} decode steps"
           f" per call, decode counted at {s.live_tokens} live tokens per row (floor: weights"
           " + live KV)", "", "per chip:"]
  hdr = (f"  {'program':8} {'fits':5} {'memory':>10} {'TFLOP':>9} {'HBM GB':>9} "
         f"{'ICI GB':>9} {'roofline':>10} {'bound':8} figure")
  lines.append(hdr)
  for name, c in p.programs.items():
    if not c.fits:
      lines.append(f"  {name:8} {'NO':5} {_gb(c.memory_bytes):>10}  {c.error}")
      for b, t, w in c.largest:
        lines.append(f"      largest: {b / GiB:.2f} GiB {t} ({w})")
      continue
    r = p.roofline(name)
    fig = ""
    if name == "train":
      fig = f"MFU {100 * r['mfu']:.0f}%, {r['tokens_per_s']:,.0f} tok/s"
    elif name == "decode":
      fig = (f"{r['step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s, "
             f"{r['hbm_bytes_per_step'] / 1e9:.2f} GB/step = {r['x_floor']:.2f}x floor")
    elif name == "extend":
      fig = f"{r['tokens_per_s']:,.0f} prompt tok/s"
    lines.append(f"  {name:8} {'yes':5} {_gb(c.memory_bytes):>10} {c.cost.flops / 1e12:9.1f} "
                 f"{c.cost.hbm_bytes / 1e9:9.1f} {c.cost.ici_bytes / 1e9:9.2f} "
                 f"{r['time_s']:9.3f}s {r['bound']:8} {fig}")
    for b, t, w in c.largest:
      lines.append(f"      largest: {b / GiB:.2f} GiB {t} ({w[-70:]})")
  if p.search:
    lines.append("")
    for k, v in p.search.items():
      lines.append(f"  largest {k} that fits: {v}")
  return "\n".join(lines)

