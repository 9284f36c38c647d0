"""Reading the optimised HLO text of a compiled program (`compiled.as_text()`): value types and
their bytes, computations, instructions and the computations an instruction calls."""

from __future__ import annotations

import dataclasses
import re

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5,
          "u4": 0.5, "token": 0}
_ARRAY = re.compile(r"([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s*\((.*)\)\s*->\s*(.*)\{\s*$")


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


# An array type with its layout, `bf16[448,3584]{1,0:T(8,128)(2,1)S(1)}`: a memory space other
# than the default (`S(n)` in the layout) is not HBM. The TPU compiler's memory-space assignment
# stages buffers in on-chip memory (space 1: a layer's weight slice prefetched before its dot,
# activations between fusions) and keeps semaphores and scalars in others; space 5 is host
# memory. Moving a value between spaces is an explicit `copy-start` / `copy-done` pair.
_ARRAY_LAYOUT = re.compile(r"([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z0-9]*)?)\[([0-9,]*)\](\{[^}]*\})?")


def in_hbm(type_text: str) -> bool:
  """Whether an array type's layout leaves it in the default memory space (HBM)."""
  m = _ARRAY_LAYOUT.search(type_text)
  return not (m and m.group(3) and re.search(r"S\(\d+\)", m.group(3)))


def hbm_bytes(type_text: str) -> float:
  """Bytes of an HLO type (array or tuple) that live in HBM: `shape_bytes` less the arrays whose
  layout names another memory space."""
  total = 0.0
  for dtype, dims, layout in _ARRAY_LAYOUT.findall(type_text):
    if layout and re.search(r"S\(\d+\)", layout):
      continue
    total += shape_bytes(f"{dtype}[{dims}]")
  return total


def tuple_parts(type_text: str) -> list[str]:
  """The element types of a tuple type `(a, b, ...)`; [type_text] for an array."""
  t = type_text.strip()
  if not t.startswith("("):
    return [t]
  return _split_top(t[1:_matching(t, 0) - 1])


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
    # Operands from the sixth on are printed after an `/*index=N*/` comment: drop it.
    operands = [re.sub(r"/\*.*?\*/", "", o).split()[-1].lstrip("%")
                for o in _split_top(rest[paren + 1:end - 1]) if o]
    instr = Instr(name, type_text, op, operands, rest[end:], root)
    cur.instrs.append(instr)
    cur.shapes[name] = type_text
  return comps, entry


def attr_comps(attrs: str, key: str) -> list[str]:
  """Names of the computations an instruction's attribute `key` (calls, body, ...) names."""
  m = re.search(key + r"=\{([^}]*)\}", attrs)
  if m:
    return [c.strip().lstrip("%") for c in m.group(1).split(",") if c.strip()]
  m = re.search(key + r"=%?([\w.\-]+)", attrs)
  return [m.group(1)] if m else []


def params_of(comp: Computation) -> dict[int, str]:
  """{parameter index: value name} of a computation."""
  out = {}
  for f in comp.instrs:
    if f.op == "parameter" and f.operands:
      try:
        out[int(f.operands[0])] = f.name
      except ValueError:
        pass
  return out

