"""Ahead-of-time plan of a config on a TPU topology, from the TPU compiler itself.

    python -m aci_jax.plan --config configs/paper.py:qwen2.5-7b --topology v5p:2x2x2 \
        [--config.KEY=VALUE ...] [--search] [--json out.json]

Needs `libtpu` (the `jax[tpu]` extra; no TPU device: the compiler runs on this host). The
planner compiles the project's real programs for abstract devices of the topology
(`jax.experimental.topologies`), sharded exactly as a run shards them:

- `train`: the M-step train step (`aci_jax.train.step.make_train_step`) on a
  `train.batch_size` x (`rollout.max_prompt_tokens` + `rollout.max_new_tokens`) batch, or
  `em.batch_length` tokens per row when set;
- `extend`: a prompt chunk of `rollout.max_prompt_tokens` tokens into every rollout row
  (`aci_jax.sampling.extend`), the train state resident beside it;
- `decode`: `rollout.decode_steps` decode steps (`aci_jax.sampling.decode`), train state
  resident.

Per chip it prints: memory (the compiler's own figures; the compiler refuses a program that
does not fit HBM, and that refusal is what "fits" means here), the largest buffers, loop-aware
FLOPs, HBM bytes and inter-chip bytes (counted from the optimised HLO with while-loop trip
counts: `cost_analysis()` counts a loop body once), the roofline time and what it implies (MFU
of the train step, decode tokens/s). `--search` also finds the largest train micro-batch,
rollout row count and prompt chunk that compile within HBM (a few more compiles each).

Nothing here runs a program; all figures are estimates from the compiled program and public
chip figures (`CHIPS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable

# The planner needs no device: keep JAX on the host CPU (libtpu would otherwise try to open a
# TPU), while the topology API still loads libtpu's compiler.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling only: no TPU is opened, so several planners (or test workers) may load libtpu at
# once, and there is no metadata server to ask for the accelerator type.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

# ------------------------------------------------------------------------------ chips


@dataclasses.dataclass(frozen=True)
class Chip:
  """Public per-chip figures (Cloud TPU system architecture pages)."""

  name: str
  hbm_bytes: float  # HBM capacity
  hbm_bw: float  # bytes/s
  bf16_flops: float  # peak dense bf16 FLOP/s
  ici_bw: float  # bytes/s of inter-chip interconnect per chip (all links, one direction)


GiB = 1024 ** 3
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 1.2e12, 275e12, 2400e9 / 8),
    "v5e": Chip("TPU v5e", 16 * GiB, 0.819e12, 197e12, 1600e9 / 8),
    "v5p": Chip("TPU v5p", 95 * GiB, 2.765e12, 459e12, 4800e9 / 8),
    "v6e": Chip("TPU v6e", 32 * GiB, 1.64e12, 918e12, 3584e9 / 8),
}

# Architectures of the paper presets' hub checkpoints (their config.json), so a plan needs no
# download. A local `model.path` with a config.json is read instead.
KNOWN_MODELS = {
    "Qwen/Qwen2.5-7B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=152064,
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=131072),
    "Qwen/Qwen2.5-Math-1.5B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936,
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096),
    "deepseek-ai/deepseek-math-7b-base": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=102400,
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
        num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096),
}


class PlanError(ValueError):
  """Bad input to the planner (one line for the user)."""


def chip_for(topology: str) -> Chip:
  gen = topology.split(":")[0]
  if gen not in CHIPS:
    raise PlanError(f"unknown TPU generation {gen!r} in --topology {topology!r}; known: "
                    f"{', '.join(CHIPS)} (e.g. v5p:2x2x2, v5e:4x4, v4:2x2x4)")
  return CHIPS[gen]


def topology_devices(topology: str):
  """Abstract devices, one per chip, of a topology named `<gen>:<AxB[xC]>`."""
  chip_for(topology)
  if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+){1,2}", topology):
    raise PlanError(f"--topology must look like v5e:4x4 or v5p:2x2x2, got {topology!r}")
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - jax always ships it
    raise PlanError(f"jax.experimental.topologies unavailable: {e}") from None
  kw = {"chip_config_name": "megacore"} if topology.startswith("v4:") else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
  except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown shape
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PlanError(f"cannot build TPU topology {topology!r} (is libtpu installed? "
                    f"pip install 'jax[tpu]'): {msg}") from None
  return list(desc.devices)


# ------------------------------------------------------------------------- HLO reading

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5,
          "u4": 0.5, "token": 0}
_ARRAY = re.compile(r"([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s*\((.*)\)\s*->\s*(.*)\{\s*$")
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                "collective-permute")
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "iota", "opt-barrier",
         "add-dependency", "copy-done", "copy-start", "send-done", "recv-done"}


def _elem_bytes(dtype: str) -> float:
  if dtype.startswith("f8"):
    return 1
  return _BYTES.get(dtype, 4)


def shape_bytes(type_text: str) -> float:
  """Bytes of an HLO type (array or tuple) printed as `bf16[8,128]{1,0:T(8,128)}`."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(type_text):
    n = 1
    for d in dims.split(","):
      if d:
        n *= int(d)
    total += n * _elem_bytes(dtype)
  return total


def shape_dims(type_text: str) -> list[int]:
  m = _ARRAY.search(type_text)
  if not m:
    return []
  return [int(d) for d in m.group(2).split(",") if d]


def _split_top(text: str, sep: str = ",") -> list[str]:
  out, depth, cur = [], 0, []
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == sep and depth == 0:
      out.append("".join(cur).strip())
      cur = []
    else:
      cur.append(ch)
  if "".join(cur).strip():
    out.append("".join(cur).strip())
  return out


def _matching(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at `start`."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] in "([{":
      depth += 1
    elif text[i] in ")]}":
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


@dataclasses.dataclass
class Instr:
  name: str
  type: str
  op: str
  operands: list[str]
  attrs: str
  root: bool


@dataclasses.dataclass
class Computation:
  name: str
  instrs: list[Instr]
  shapes: dict[str, str]  # value name -> type text (parameters and instructions)


def parse_hlo(text: str) -> tuple[dict[str, Computation], str]:
  """{computation name: Computation}, entry name, from `compiled.as_text()`."""
  comps: dict[str, Computation] = {}
  entry = ""
  cur: Computation | None = None
  for line in text.splitlines():
    m = _HEADER.match(line)
    if m:
      cur = Computation(m.group(2), [], {})
      comps[cur.name] = cur
      if m.group(1):
        entry = cur.name
      for p in _split_top(m.group(3)):
        if ":" in p:
          pname, ptype = p.split(":", 1)
          cur.shapes[pname.strip().lstrip("%")] = ptype.strip()
      continue
    if cur is None:
      continue
    s = line.strip()
    if s == "}":
      cur = None
      continue
    root = s.startswith("ROOT ")
    if root:
      s = s[5:]
    if not s.startswith("%") or " = " not in s:
      continue
    name, rest = s[1:].split(" = ", 1)
    if rest.startswith("("):
      end = _matching(rest, 0)
      type_text, rest = rest[:end], rest[end:].lstrip()
    else:
      type_text, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
      continue
    op = rest[:paren]
    end = _matching(rest, paren)
    operands = [o.split()[-1].lstrip("%") for o in _split_top(rest[paren + 1:end - 1]) if o]
    instr = Instr(name, type_text, op, operands, rest[end:], root)
    cur.instrs.append(instr)
    cur.shapes[name] = type_text
  return comps, entry


def _attr_comps(attrs: str, key: str) -> list[str]:
  m = re.search(key + r"=\{([^}]*)\}", attrs)
  if m:
    return [c.strip().lstrip("%") for c in m.group(1).split(",") if c.strip()]
  m = re.search(key + r"=%?([\w.\-]+)", attrs)
  return [m.group(1)] if m else []


def _group_size(attrs: str, num_devices: int) -> int:
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((k.strip().strip("'"), int(v)) for k, v in
                 (kv.split("=") for kv in m.group(1).split(",")))
    axes = [a.strip().strip("'") for a in m.group(2).split(",") if a.strip()]
    return math.prod(sizes[a] for a in axes) if axes else 1
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=\{\{([^}]*)\}", attrs)
  if m:
    return len([x for x in m.group(1).split(",") if x.strip()])
  m = re.search(r"source_target_pairs=\{", attrs)
  if m:
    return 2
  return num_devices


def _trip_count(comps: dict[str, Computation], cond: str, attrs: str) -> int:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
  if m:
    return int(m.group(1))
  c = comps.get(cond)
  if c is None:
    return 1
  # `i < N` with N a constant (the constant's value prints as its operand); loops start at 0.
  consts = {}
  for ins in c.instrs:
    if ins.op == "constant" and ins.type.startswith(("s32", "u32", "s64")) and ins.operands:
      try:
        consts[ins.name] = int(ins.operands[0])
      except ValueError:
        pass
  trips = []
  for ins in c.instrs:
    if ins.op == "compare" and "direction=LT" in ins.attrs:
      for o in ins.operands[1:]:
        if consts.get(o) is not None:
          trips.append(consts[o])
  return max(trips) if trips else 1


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  hbm_bytes: float = 0.0
  ici_bytes: float = 0.0
  collectives: dict = dataclasses.field(default_factory=dict)  # op -> bytes

  def add(self, other: "Cost", times: float = 1.0) -> None:
    self.flops += other.flops * times
    self.hbm_bytes += other.hbm_bytes * times
    self.ici_bytes += other.ici_bytes * times
    for k, v in other.collectives.items():
      self.collectives[k] = self.collectives.get(k, 0.0) + v * times


def _dot_flops(ins: Instr, shapes: dict[str, str]) -> float:
  out = math.prod(shape_dims(ins.type)) if shape_dims(ins.type) else 1
  if ins.op == "dot":
    lhs = shape_dims(shapes.get(ins.operands[0], ""))
    m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
    contract = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m and lhs else 1
    return 2.0 * out * contract
  lhs = shape_dims(shapes.get(ins.operands[0], ""))
  rhs = shape_dims(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
  outd = shape_dims(ins.type)
  m = re.search(r"dim_labels=([^_]*)_([^-]*)->(\S+?)[,\s]", ins.attrs + " ")
  if not (lhs and rhs and m):
    return 0.0
  ll, rl, ol = m.groups()
  flops = 2.0 * outd[ol.index("b")] * rhs[rl.index("o")] * rhs[rl.index("i")]
  # The TPU compiler writes batched matmuls as convolutions whose spatial dimensions are
  # batch dimensions in disguise (padding, dilation, stride): count, per spatial dimension,
  # the (output, window) position pairs that land on a real input element, as XLA does.
  win = re.search(r"window=\{([^}]*)\}", ins.attrs)
  fields = {}
  if win:
    for part in win.group(1).split():
      k, _, v = part.partition("=")
      fields[k] = v.split("x")
  for d in sorted(ch for ch in ll if ch.isdigit()):
    i = int(d)
    n_in, k = lhs[ll.index(d)], rhs[rl.index(d)]
    n_out = outd[ol.index(d)]
    get = lambda key, default: int(fields[key][i]) if key in fields else default
    stride, ld, rd = get("stride", 1), get("lhs_dilate", 1), get("rhs_dilate", 1)
    lo = int(fields["pad"][i].split("_")[0]) if "pad" in fields else 0
    span = (n_in - 1) * ld
    pairs = 0
    for o in range(n_out):
      for j in range(k):
        x = o * stride - lo + j * rd
        if 0 <= x <= span and x % ld == 0:
          pairs += 1
    flops *= pairs
  return flops


def _fusion_io_bytes(ins: Instr, shapes: dict[str, str], fused: Computation | None,
                     comps: dict | None = None) -> float:
  """HBM bytes a fusion (or plain op) moves: operands read plus output written, except that
  an in-place dynamic-update-slice moves only its update, and an operand read only through
  dynamic-slice / gather moves only the slice."""
  out_b = shape_bytes(ins.type)
  in_b = [shape_bytes(shapes.get(o, "")) for o in ins.operands]
  if fused is None:
    if ins.op == "dynamic-update-slice" and len(ins.operands) > 1:
      return 2 * in_b[1] + sum(in_b[2:])
    if ins.op == "scatter" and len(ins.operands) > 2:
      return 2 * in_b[2] + in_b[1]
    if ins.op in ("dynamic-slice", "gather", "slice"):
      return 2 * out_b + sum(in_b[1:])
    return out_b + sum(in_b)
  params = {}
  for f in fused.instrs:
    if f.op == "parameter" and f.operands:
      try:
        params[f.name] = int(f.operands[0])
      except ValueError:
        pass
  users: dict[str, list[Instr]] = {}
  for f in fused.instrs:
    for o in f.operands:
      users.setdefault(o, []).append(f)
  roots = [f for f in fused.instrs if f.root]
  root_ops = []
  for r in roots:
    if r.op == "tuple":
      root_ops += [f for f in fused.instrs if f.name in r.operands]
    else:
      root_ops.append(r)
  # In-place updates (dynamic-update-slice, scatter) of a buffer that enters as a parameter:
  # only the update is read and written.
  update_operand = {"dynamic-update-slice": 1, "scatter": 2}
  in_place = {}
  for r in root_ops:
    if r.op in update_operand and r.operands and r.operands[0] in params:
      i = update_operand[r.op]
      upd = shape_bytes(fused.shapes.get(r.operands[i], "")) if len(r.operands) > i else 0
      in_place[params[r.operands[0]]] = upd
  total = 0.0
  for r in root_ops:
    if r.op in update_operand and r.operands and r.operands[0] in params:
      total += in_place[params[r.operands[0]]]
    else:
      total += shape_bytes(r.type)
  by_index = {i: n for n, i in params.items()}
  for i, b in enumerate(in_b):
    if i in in_place:
      total += in_place[i]
      continue
    pname = by_index.get(i)
    part = _value_read(comps, fused, pname) if pname else None
    total += b if part is None else min(part, b)
  return total


def _params_of(comp: Computation) -> dict[int, str]:
  out = {}
  for f in comp.instrs:
    if f.op == "parameter" and f.operands:
      try:
        out[int(f.operands[0])] = f.name
      except ValueError:
        pass
  return out


def _value_read(comps, comp: Computation, name: str, depth: int = 0) -> float | None:
  """Bytes of `name` that `comp` actually reads when every use is a slice of it (through
  bitcasts and nested fusions); None when some use reads it whole."""
  if depth > 8:
    return None
  total = 0.0
  for u in comp.instrs:
    if name not in u.operands:
      continue
    if u.op in ("dynamic-slice", "slice", "gather") and u.operands[0] == name:
      total += shape_bytes(u.type)
    elif u.op in ("bitcast", "reshape"):
      r = _value_read(comps, comp, u.name, depth + 1)
      if r is None:
        return None
      total += r
    elif u.op == "fusion":
      called = _attr_comps(u.attrs, "calls")
      sub = comps.get(called[0]) if called else None
      if sub is None:
        return None
      sub_params = _params_of(sub)
      for idx, o in enumerate(u.operands):
        if o != name:
          continue
        r = _value_read(comps, sub, sub_params.get(idx, ""), depth + 1)
        if r is None:
          return None
        total += r
    else:
      return None
  return total


def hlo_cost(text: str, num_devices: int) -> tuple[Cost, Cost]:
  """(loop-aware cost, cost with every loop body counted once) of one device's program."""
  comps, entry = parse_hlo(text)
  memo: dict[tuple[str, bool, bool], Cost] = {}

  def cost(name: str, loops: bool, fused: bool) -> Cost:
    key = (name, loops, fused)
    if key in memo:
      return memo[key]
    c = Cost()
    comp = comps.get(name)
    if comp is None:
      return c
    for ins in comp.instrs:
      op = ins.op
      if op in ("dot", "convolution"):
        c.flops += _dot_flops(ins, comp.shapes)
      base = op[:-6] if op.endswith("-start") else op
      if base in _COLLECTIVES and not op.endswith("-done"):
        n = _group_size(ins.attrs, num_devices)
        b = sum(shape_bytes(comp.shapes.get(o, "")) for o in ins.operands)
        moved = {"all-gather": b * (n - 1), "reduce-scatter": b * (n - 1) / n,
                 "all-reduce": 2 * b * (n - 1) / n, "all-to-all": b * (n - 1) / n,
                 "collective-permute": b}[base]
        if n > 1 or base == "collective-permute":
          c.ici_bytes += moved
          c.collectives[base] = c.collectives.get(base, 0.0) + moved
      if op == "fusion":
        called = _attr_comps(ins.attrs, "calls")
        sub = comps.get(called[0]) if called else None
        for cc in called:
          inner = cost(cc, loops, True)
          c.flops += inner.flops
          c.ici_bytes += inner.ici_bytes
          for k, v in inner.collectives.items():
            c.collectives[k] = c.collectives.get(k, 0.0) + v
        if not fused:
          c.hbm_bytes += _fusion_io_bytes(ins, comp.shapes, sub, comps)
      elif op == "while":
        body = _attr_comps(ins.attrs, "body")
        cond = _attr_comps(ins.attrs, "condition")
        n = _trip_count(comps, cond[0], ins.attrs) if (loops and cond) else 1
        for b in body:
          c.add(cost(b, loops, False), n)
      elif op in ("call", "async-start"):
        for cc in _attr_comps(ins.attrs, "to_apply") + _attr_comps(ins.attrs, "calls"):
          c.add(cost(cc, loops, fused))
      elif op == "conditional":
        branches = (_attr_comps(ins.attrs, "branch_computations")
                    + _attr_comps(ins.attrs, "true_computation")
                    + _attr_comps(ins.attrs, "false_computation"))
        if branches:
          worst = max((cost(b, loops, False) for b in branches), key=lambda x: x.flops)
          c.add(worst)
      elif not fused and op not in _FREE and not op.endswith("-done"):
        if base not in _COLLECTIVES:
          c.hbm_bytes += _fusion_io_bytes(ins, comp.shapes, None)
    memo[key] = c
    return c

  return cost(entry, True, False), cost(entry, False, False)


def largest_buffers(text: str, k: int = 3) -> list[tuple[float, str, str]]:
  """The k largest values computed by the program (bytes, type, op name), outside fusions."""
  comps, _ = parse_hlo(text)
  fused = set()
  for comp in comps.values():
    for ins in comp.instrs:
      if ins.op == "fusion":
        fused.update(_attr_comps(ins.attrs, "calls"))
  seen = []
  for comp in comps.values():
    if comp.name in fused:
      continue
    for ins in comp.instrs:
      if ins.op in ("parameter", "get-tuple-element", "tuple", "while", "bitcast", "call",
                    "conditional", "constant"):
        continue
      m = re.search(r'op_name="([^"]*)"', ins.attrs)
      where = m.group(1) if m else ins.name
      seen.append((shape_bytes(ins.type), ins.type.split("{")[0], where))
  seen.sort(key=lambda x: -x[0])
  out, names = [], set()
  for b, t, w in seen:
    if (t, w) in names:
      continue
    names.add((t, w))
    out.append((b, t, w))
    if len(out) == k:
      break
  return out


# ----------------------------------------------------------------------------- programs


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


def compile_program(name: str, fn, args, num_devices: int) -> Compiled:
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
  cost, once = hlo_cost(text, num_devices)
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


@dataclasses.dataclass
class Setup:
  """Everything a plan needs from a config."""

  model: Any  # ModelConfig
  mesh: Any  # jax.sharding.Mesh over abstract TPU devices
  loss: Any
  optimizer: Any
  schedule: Any
  step: Any  # StepConfig
  train_rows: int
  train_len: int
  rollout_rows: int
  capacity: int
  max_new: int
  prompt_chunk: int
  decode_steps: int
  sampling: Any


def model_config_for(config):
  """ModelConfig of `config.model` without downloading: a known hub id's shapes, or a local
  checkpoint's config.json."""
  from aci_jax.model import ModelConfig
  from aci_jax.train.runner import dataclass_from

  m = dict(config.model)
  runtime = {k: m[k] for k in ("dtype", "param_dtype", "remat") if k in m}
  if m.get("init", "scratch") != "hf":
    m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()
         if k not in ("init", "path")}
    return dataclass_from(ModelConfig, m, name="model")
  path = m.get("path", "")
  if path in KNOWN_MODELS:
    return ModelConfig.from_hf_dict(KNOWN_MODELS[path], **runtime)
  if os.path.isfile(os.path.join(path, "config.json")):
    return ModelConfig.from_pretrained(path, **runtime)
  raise PlanError(f"config.model.path {path!r}: not a local checkpoint directory and not one "
                  f"of the known hub ids ({', '.join(KNOWN_MODELS)})")


def setup_from_config(config, devices) -> Setup:
  import jax
  from aci_jax.em.modes import _loss_for, _rollout_config
  from aci_jax.parallel import MeshConfig
  from aci_jax.parallel.mesh import AXES
  from aci_jax.train.optim import OptimConfig, make_optimizer
  from aci_jax.train.runner import dataclass_from
  from aci_jax.train.step import StepConfig

  model = model_config_for(config)
  try:
    shape = dataclass_from(MeshConfig, config.mesh, name="mesh").resolve(len(devices))
  except ValueError as e:
    raise PlanError(f"config.mesh: {e}") from None
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  mesh = jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
  t = config.train
  step = dataclass_from(StepConfig, {"micro_batches": t.micro_batches,
                                     "logprob_chunk": t.logprob_chunk,
                                     "logprob_remat": t.get("logprob_remat", True)},
                        name="train")
  optimizer, schedule = make_optimizer(dataclass_from(OptimConfig, config.optim, name="optim"))
  rollout = _rollout_config(config)
  length = int(config.em.get("batch_length", 0) or 0) or rollout.capacity
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % (t.micro_batches * dp):
    raise PlanError(f"config.train.batch_size={t.batch_size} must divide by micro_batches "
                    f"({t.micro_batches}) x data-parallel chips ({dp})")
  if rollout.batch_size % dp:
    raise PlanError(f"config.rollout.batch_size={rollout.batch_size} must divide by the "
                    f"data-parallel chips ({dp})")
  return Setup(model=model, mesh=mesh, loss=_loss_for(config), optimizer=optimizer,
               schedule=schedule, step=step, train_rows=t.batch_size, train_len=length,
               rollout_rows=rollout.batch_size, capacity=rollout.capacity,
               max_new=rollout.max_new_tokens, prompt_chunk=rollout.max_prompt_tokens,
               decode_steps=rollout.decode_steps, sampling=rollout.sampling)


def _abstract(tree, shardings):
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def train_program(s: Setup, *, micro_batches: int | None = None):
  """(jitted train step, abstract (state, batch)) as the M-step runs it."""
  import jax
  import jax.numpy as jnp
  from aci_jax.train.step import abstract_train_state, batch_sharding, make_train_step

  state, shardings = abstract_train_state(s.model, s.optimizer, s.mesh)
  step_cfg = s.step if micro_batches is None else dataclasses.replace(
      s.step, micro_batches=micro_batches)
  fn = make_train_step(s.model, s.loss, s.optimizer, s.schedule, s.mesh, shardings, step_cfg)
  b, t = s.train_rows, s.train_len
  spec = {"tokens": ((b, t), jnp.int32), "positions": ((b, t), jnp.int32),
          "valid": ((b, t), jnp.bool_), "loss_mask": ((b, t), jnp.float32),
          "behaviour_logp": ((b, t), jnp.float32), "advantages": ((b,), jnp.float32),
          "decision_mask": ((b,), jnp.float32)}
  for k in sorted(s.loss.required_keys() - set(spec)):
    spec[k] = ((b, t), jnp.float32)
  batch = {k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(s.mesh, len(shape)))
           for k, (shape, dt) in spec.items()}
  return fn.jitted, (state, batch)


def _sampling_inputs(s: Setup, rows: int):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from aci_jax.model import param_shapes
  from aci_jax.parallel import SAMPLING_RULES, param_shardings
  from aci_jax.sampling import sampler as S
  from aci_jax.train.step import abstract_train_state

  train_state, _ = abstract_train_state(s.model, s.optimizer, s.mesh)
  pshapes = param_shapes(s.model)
  psh = param_shardings(pshapes, s.mesh, SAMPLING_RULES)
  params = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(
          a.shape, s.model.compute_dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype,
          sharding=sh), pshapes, psh)
  state = jax.eval_shape(lambda: S.SamplerState.init(s.model, rows, s.capacity, s.max_new))
  state = _abstract(state, S.state_shardings(state, s.mesh))
  rep = NamedSharding(s.mesh, P())
  v = s.model.vocab_size
  # String automata: a few dozen states each (the fence and the ban strings).
  tables = S.Tables(
      stop_next=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      stop_hit=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      stop_is_tool=jax.ShapeDtypeStruct((2,), jnp.bool_, sharding=rep),
      ban_next=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      ban_hit=jax.ShapeDtypeStruct((32, v), jnp.int32, sharding=rep),
      eos_ids=jax.ShapeDtypeStruct((2,), jnp.int32, sharding=rep))
  return train_state, params, state, tables


def extend_program(s: Setup, *, rows: int | None = None, chunk: int | None = None):
  """(jitted extend with the train state resident, abstract args): a prompt chunk into every
  row, as the engine fills new rows."""
  import jax
  import jax.numpy as jnp
  from aci_jax.sampling import sampler as S
  from aci_jax.train.step import batch_sharding

  rows = rows or s.rollout_rows
  chunk = chunk or s.prompt_chunk
  train_state, params, state, tables = _sampling_inputs(s, rows)
  bs2, bs1 = batch_sharding(s.mesh, 2), batch_sharding(s.mesh, 1)
  tokens = jax.ShapeDtypeStruct((rows, chunk), jnp.int32, sharding=bs2)
  valid = jax.ShapeDtypeStruct((rows, chunk), jnp.bool_, sharding=bs2)
  src = jax.ShapeDtypeStruct((rows,), jnp.int8, sharding=bs1)
  resume = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=bs1)
  cfg = s.model

  def fn(train_state, state, params, tables, tokens, valid, src, resume):
    del train_state  # resident only: the compiler's HBM check must count it
    return S.extend.__wrapped__(cfg, state, params, tables, tokens, valid, src, resume,
                                record=False)

  jitted = jax.jit(fn, donate_argnums=(1,), keep_unused=True)
  return jitted, (train_state, state, params, tables, tokens, valid, src, resume)


def decode_program(s: Setup, *, rows: int | None = None):
  """(jitted decode loop of `decode_steps` steps with the train state resident, args)."""
  import jax
  from aci_jax.sampling import sampler as S

  rows = rows or s.rollout_rows
  train_state, params, state, tables = _sampling_inputs(s, rows)
  cfg, sp, steps = s.model, s.sampling, s.decode_steps

  def fn(train_state, state, params, tables):
    del train_state
    return S.decode.__wrapped__(cfg, sp, state, params, tables, steps, False)

  jitted = jax.jit(fn, donate_argnums=(1,), keep_unused=True)
  return jitted, (train_state, state, params, tables)


# ------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Plan:
  topology: str
  chips: int
  mesh: dict
  chip: Chip
  model: Any
  setup: Setup
  programs: dict[str, Compiled]
  search: dict = dataclasses.field(default_factory=dict)

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
                        "decode_steps": self.setup.decode_steps},
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
           " per call", "", "per chip:"]
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
      fig = f"{r['step_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s"
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


def plan(config, topology: str, *, programs=("train", "extend", "decode"),
         search: bool = False, log: Callable[[str], None] = lambda m: None) -> Plan:
  devices = topology_devices(topology)
  s = setup_from_config(config, devices)
  builders = {"train": train_program, "extend": extend_program, "decode": decode_program}
  out = {}
  for name in programs:
    log(f"compiling {name} ...")
    fn, args = builders[name](s)
    out[name] = compile_program(name, fn, args, len(devices))
    log(f"  {name}: {'fits' if out[name].fits else 'does NOT fit'} "
        f"({out[name].seconds:.0f} s)")
  p = Plan(topology, len(devices), dict(s.mesh.shape), chip_for(topology), s.model, s, out)
  if search:
    p.search = search_limits(s, out, len(devices), log)
  return p


def _fits(name: str, fn, args, n: int) -> bool:
  return compile_program(name, fn, args, n).fits


def search_limits(s: Setup, done: dict[str, Compiled], n: int, log) -> dict:
  """Largest train micro-batch (rows per optimizer micro-step), rollout rows and prompt chunk
  that compile within HBM, by doubling/halving from the config's values."""
  dp = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  out = {}
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
  out["train micro-batch"] = (f"{s.train_rows // best} rows x {s.train_len} tokens "
                              f"(micro_batches={best})" if best else "none")

  def grow(name, start, lo, build, limit):
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

  done_fit = {("decode", s.rollout_rows): done["decode"].fits} if "decode" in done else {}
  rows = grow("decode", s.rollout_rows, dp, lambda r: decode_program(s, rows=r),
              s.rollout_rows * 8)
  out["rollout rows (decode)"] = rows or "none"
  done_fit = {("extend", s.prompt_chunk): done["extend"].fits} if "extend" in done else {}
  chunk = grow("extend", s.prompt_chunk, 16, lambda c: extend_program(s, chunk=c),
               s.prompt_chunk)
  out[f"prompt chunk (extend, {s.rollout_rows} rows)"] = chunk or "none"
  return out


# -------------------------------------------------------------------------------- CLI


def versions() -> str:
  import jax
  try:
    from importlib.metadata import version
    libtpu = version("libtpu")
  except Exception:  # noqa: BLE001
    libtpu = "?"
  return f"jax {jax.__version__}, libtpu {libtpu}"


def main(argv=None) -> int:
  from absl import flags
  from ml_collections import config_flags

  fl = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "a configs/*.py file[:arg]", flag_values=fl)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v4:2x2x4",
                      flag_values=fl)
  flags.DEFINE_bool("search", False, "also find the largest micro-batch / rows / chunk that fit",
                    flag_values=fl)
  flags.DEFINE_list("programs", ["train", "extend", "decode"], "programs to compile",
                    flag_values=fl)
  flags.DEFINE_string("json", "", "also write the plan as JSON here", flag_values=fl)
  argv = sys.argv if argv is None else argv
  try:
    rest = fl(argv)
  except Exception as e:  # noqa: BLE001 - flag errors are one line
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  if len(rest) > 1:
    print(f"error: unexpected arguments {rest[1:]}", file=sys.stderr)
    return 2
  if fl["config"].value is None or not fl["topology"].value:
    print("error: --config and --topology are required", file=sys.stderr)
    return 2
  bad = [p for p in fl["programs"].value if p not in ("train", "extend", "decode")]
  if bad:
    print(f"error: unknown --programs {bad}; choose from train, extend, decode",
          file=sys.stderr)
    return 2
  try:
    config = fl["config"].value
    config.get("mode", None)
    p = plan(config, fl["topology"].value, programs=tuple(fl["programs"].value),
             search=fl["search"].value, log=lambda m: print(m, file=sys.stderr, flush=True))
  except PlanError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - config errors (ConfigError) are ValueErrors
    from aci_jax.train.runner import ConfigError
    if isinstance(e, (ConfigError, KeyError)):
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
      return 2
    raise
  print(format_plan(p))
  print(f"\n({versions()}; figures per chip; memory = the compiler's arguments + outputs - "
        "donated + temporaries)")
  if fl["json"].value:
    from aci_jax import fileio
    d = p.to_dict()
    d["versions"] = versions()
    fileio.write_text(fl["json"].value, json.dumps(d, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
