"""Loop-aware per-chip cost of a compiled program, counted from its optimised HLO: FLOPs, HBM
bytes and inter-chip (ICI) bytes, with while loops multiplied by their trip counts
(`cost_analysis()` counts a loop body once), and the program's largest buffers."""

from __future__ import annotations

import dataclasses
import math
import re

from aci_jax.model.kernels.paged import KERNEL_SCOPE as PAGED_KERNEL
from aci_jax.model.live_attention import LOOP_SCOPE as LIVE_LOOP
from aci_jax.plan.hlo import (Computation, Instr, attr_comps, hbm_bytes, in_hbm, params_of,
                              parse_hlo, shape_bytes, shape_dims, tuple_parts)

_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                "collective-permute")
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "iota", "opt-barrier",
         "add-dependency", "copy-done", "send-done", "recv-done"}


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


def _live_trip(attrs: str, live_tokens: int | None) -> int | None:
  """Trip count of a loop over live KV blocks (`aci_jax.model.live_attention`, recognised by
  its name scope): the blocks `live_tokens` need (the real count is known only at run time);
  None for any other loop."""
  m = re.search(LIVE_LOOP + r"_(\d+)/while\"", attrs)
  if m and live_tokens:
    return -(-live_tokens // int(m.group(1)))
  return None


def _paged_kernel_cost(ins: Instr, shapes: dict[str, str], live_tokens: int | None):
  """(FLOPs, HBM bytes) of a call of the Pallas paged-attention kernel (`model/kernels/paged.py`,
  recognised by its name scope) for rows of `live_tokens`, or None for any other op. The kernel
  takes the whole page pools as operands but copies only each row's pages up to its length,
  whole compute blocks at a time, by DMA; what it copies is counted, the rest of the pools not.
  Operands in the order of `paged_attention`'s call: lengths, page indices, two scalars, q
  [B, H, (1,) Dh], k pages, v pages [K, pages, N, Dh]."""
  m = re.search(PAGED_KERNEL + r"_(\d+)/", ins.attrs)
  if not m or not live_tokens or len(ins.operands) != 7:
    return None
  block = int(m.group(1))
  slots = -(-live_tokens // block) * block
  q = shape_dims(shapes.get(ins.operands[4], ""))
  kv = shapes.get(ins.operands[5], "")
  kh, _, _, dh = shape_dims(kv)
  rows, heads = q[0], q[1]
  per_pool = rows * kh * slots * dh * shape_bytes(kv) / math.prod(shape_dims(kv))
  small = sum(shape_bytes(shapes.get(o, "")) for o in ins.operands[:5])
  flops = 4.0 * rows * heads * slots * dh  # q.k and p.v for every head and live slot
  return flops, small + shape_bytes(ins.type) + 2 * per_pool


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


def _collective_part(ins: Instr, fused: Computation) -> tuple[set[int], set[int]]:
  """(operand indices, output indices) of an async collective fusion that belong to the
  collective it carries: operands a collective reads, outputs aliased to operands (its
  destination buffers and step counters, passed through)."""
  by_index = params_of(fused)
  coll = [f for f in fused.instrs if f.op in _COLLECTIVES]
  if not coll:
    return set(), set()
  operands = {i for i, n in by_index.items() if any(n in c.operands for c in coll)}
  m = re.search(r"output_to_operand_aliasing=\{(.*?)\}, ", ins.attrs)
  outputs = set()
  if m:
    for o, i in re.findall(r"\{(\d+)\}: \((\d+),", m.group(1)):
      outputs.add(int(o))
      operands.add(int(i))
  return operands, outputs


def _copy_start_bytes(ins: Instr, shapes: dict[str, str]) -> float:
  """HBM bytes of an asynchronous copy between memory spaces, `copy-start` -> (destination,
  source, context): a prefetch into on-chip memory reads its source from HBM, an eviction
  writes its destination there."""
  parts = tuple_parts(ins.type)
  src = shapes.get(ins.operands[0], "") if ins.operands else ""
  return hbm_bytes(src) + (hbm_bytes(parts[0]) if len(parts) > 1 else 0.0)


def _fusion_io_bytes(ins: Instr, shapes: dict[str, str], fused: Computation | None,
                     comps: dict | None = None, skip_collective: bool = False) -> float:
  """HBM bytes a fusion (or plain op) moves: operands read plus output written, except that
  an in-place dynamic-update-slice moves only its update, and an operand read only through
  dynamic-slice / gather moves only the slice. Values the compiler placed in another memory
  space (on-chip, `hlo.in_hbm`) move no HBM bytes: a weight slice staged on chip is counted
  once, where it is read from HBM, not again where it is written and read on chip.
  `skip_collective`: leave out what belongs to the collective an async collective fusion
  carries (`_collective_part`)."""
  out_b = hbm_bytes(ins.type)
  in_b = [hbm_bytes(shapes.get(o, "")) for o in ins.operands]
  if fused is None:
    # In-place updates and slices: the update / slice, read or written where it is in HBM.
    if ins.op == "dynamic-update-slice" and len(ins.operands) > 1:
      upd = shape_bytes(shapes.get(ins.operands[1], ""))
      return in_b[1] + (upd if in_hbm(ins.type) else 0.0) + sum(in_b[2:])
    if ins.op == "scatter" and len(ins.operands) > 2:
      upd = shape_bytes(shapes.get(ins.operands[2], ""))
      return in_b[2] + (upd if in_hbm(ins.type) else 0.0) + in_b[1]
    if ins.op in ("dynamic-slice", "gather", "slice"):
      src = shapes.get(ins.operands[0], "") if ins.operands else ""
      read = shape_bytes(ins.type) if in_hbm(src) else 0.0
      return read + out_b + sum(in_b[1:])
    return out_b + sum(in_b)
  by_index = params_of(fused)
  params = {n: i for i, n in by_index.items()}
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
      # An update of a buffer held on chip moves nothing through HBM.
      on_chip = not in_hbm(fused.shapes.get(r.operands[0], ""))
      in_place[params[r.operands[0]]] = 0.0 if on_chip else upd
  skip_in, skip_out = _collective_part(ins, fused) if skip_collective else (set(), set())
  total = 0.0
  for j, r in enumerate(root_ops):
    if j in skip_out:
      continue
    if r.op in update_operand and r.operands and r.operands[0] in params:
      total += in_place[params[r.operands[0]]]
    else:
      total += hbm_bytes(r.type)
  for i, b in enumerate(in_b):
    if i in skip_in:
      continue
    if i in in_place:
      total += in_place[i]
      continue
    pname = by_index.get(i)
    part = _value_read(comps, fused, pname) if pname else None
    total += b if part is None else min(part, b)
  return total


def _value_read(comps, comp: Computation, name: str, depth: int = 0) -> float | None:
  """Bytes of `name` that `comp` actually reads when every use is a slice of it (through
  bitcasts and nested fusions); None when some use reads it whole."""
  if depth > 8:
    return None
  # A value that is (part of) the computation's result is read whole by whoever uses the
  # result: a nested fusion that only bitcasts an operand hands it on to the outer matmul.
  for r in comp.instrs:
    if r.root and (r.name == name or (r.op == "tuple" and name in r.operands)):
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
      called = attr_comps(u.attrs, "calls")
      sub = comps.get(called[0]) if called else None
      if sub is None:
        return None
      sub_params = params_of(sub)
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


def hlo_cost(text: str, num_devices: int, live_tokens: int | None = None) -> tuple[Cost, Cost]:
  """(loop-aware cost, cost with every loop body counted once) of one device's program.
  `live_tokens`: the longest row's live KV length assumed for loops over live KV blocks (their
  trip count is not a compile-time constant); without it such a loop counts once."""
  comps, entry = parse_hlo(text)
  memo: dict[tuple[str, bool, bool, bool], Cost] = {}

  def cost(name: str, loops: bool, fused: bool, skip: bool = False) -> Cost:
    """`skip`: leave out collectives and what async collective fusions spend on them."""
    key = (name, loops, fused, skip)
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
        if (n > 1 or base == "collective-permute") and not skip:
          c.ici_bytes += moved
          c.collectives[base] = c.collectives.get(base, 0.0) + moved
      if op == "fusion":
        called = attr_comps(ins.attrs, "calls")
        sub = comps.get(called[0]) if called else None
        for cc in called:
          inner = cost(cc, loops, True, skip)
          c.flops += inner.flops
          c.ici_bytes += inner.ici_bytes
          for k, v in inner.collectives.items():
            c.collectives[k] = c.collectives.get(k, 0.0) + v
        if not fused:
          c.hbm_bytes += _fusion_io_bytes(ins, comp.shapes, sub, comps, skip)
      elif op == "while":
        body = attr_comps(ins.attrs, "body")
        cond = attr_comps(ins.attrs, "condition")
        live = _live_trip(ins.attrs, live_tokens) if loops else None
        if live is not None:
          # XLA's async collective fusions may place a step of an unrelated collective (the
          # next weight all-gather) in this loop's fusions; such a collective advances one
          # step per invocation and completes once, so it is counted once, the rest per trip.
          for b in body:
            c.add(cost(b, loops, False, skip))
            c.add(cost(b, loops, False, True), live - 1)
          continue
        n = _trip_count(comps, cond[0], ins.attrs) if (loops and cond) else 1
        for b in body:
          c.add(cost(b, loops, False, skip), n)
      elif op in ("call", "async-start"):
        for cc in attr_comps(ins.attrs, "to_apply") + attr_comps(ins.attrs, "calls"):
          c.add(cost(cc, loops, fused, skip))
      elif op == "conditional":
        branches = (attr_comps(ins.attrs, "branch_computations")
                    + attr_comps(ins.attrs, "true_computation")
                    + attr_comps(ins.attrs, "false_computation"))
        if branches:
          worst = max((cost(b, loops, False, skip) for b in branches), key=lambda x: x.flops)
          c.add(worst)
      elif (op == "custom-call"
            and (paged := _paged_kernel_cost(ins, comp.shapes, live_tokens)) is not None):
        c.flops += paged[0]
        if not fused:
          c.hbm_bytes += paged[1]
      elif op == "copy-start":
        if not fused:
          c.hbm_bytes += _copy_start_bytes(ins, comp.shapes)
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
        fused.update(attr_comps(ins.attrs, "calls"))
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

