"""The trajectory record: everything the E-step, the M-step and evaluation need from a rollout.

Token-level fields are aligned with `response_ids`. `source` says who wrote each token
(0 sampled by the policy, 1 forced prefix, 2 environment/tool output); the loss mask is derived
from it, so tool output can never be trained on by accident.

An iteration holds every rollout on its host until the M-step, so the token-level fields are
compact (`Column`: a frozen numpy array; int32 token ids, float32 behaviour log-probs, int8
sources: 9 bytes per response token, where Python lists took ~80), the prompt of a query is one
array shared by all its samples, and `pack` / `unpack` turn a list of trajectories into a few
concatenated arrays for the multi-host gather. A `Column` indexes, iterates and compares like the
list it replaced; `np.asarray(column)` is the array itself. JSON records are unchanged: plain
lists, as before.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import weakref
from typing import Iterable, Sequence

import numpy as np

from aci_jax import fileio

SRC_SAMPLED, SRC_FORCED, SRC_ENV = 0, 1, 2


class Column(collections.abc.Sequence):
  """An immutable sequence of numbers stored as a read-only 1-D numpy array.

  Items and iteration give Python numbers; a slice is a Column over the same memory; it compares
  equal to any sequence (list, tuple, array, Column) with the same elements, so code written for
  the lists it replaced keeps working. `np.asarray(c)` and `c.array` are the array, not a copy.
  """

  __slots__ = ("_a", "__weakref__")  # weak references: prompt interning (`_shared_prompt`)

  def __init__(self, values, dtype=None):
    a = np.array(values, dtype=dtype)  # always a copy: never a view into someone's buffer
    if a.ndim != 1:
      raise ValueError(f"a Column is 1-D, got shape {a.shape}")
    a.setflags(write=False)
    self._a = a

  @classmethod
  def _view(cls, a: np.ndarray) -> "Column":
    """A Column over `a` itself (1-D, made read-only here): for slices and `unpack`."""
    c = cls.__new__(cls)
    a = a.view()
    a.setflags(write=False)
    c._a = a
    return c

  @property
  def array(self) -> np.ndarray:
    return self._a

  @property
  def dtype(self) -> np.dtype:
    return self._a.dtype

  def __len__(self) -> int:
    return self._a.shape[0]

  def __getitem__(self, i):
    if isinstance(i, slice):
      return Column._view(self._a[i])
    return self._a[i].item()

  def __iter__(self):
    return iter(self._a.tolist())

  def __array__(self, dtype=None, copy=None):
    if copy or (dtype is not None and np.dtype(dtype) != self._a.dtype):
      return np.array(self._a, dtype=dtype)
    return self._a

  def tolist(self) -> list:
    return self._a.tolist()

  def __eq__(self, other):
    if isinstance(other, Column):
      other = other._a
    elif isinstance(other, (str, bytes)) or not isinstance(
        other, (collections.abc.Sequence, np.ndarray)):
      return NotImplemented
    return len(other) == len(self._a) and bool(np.array_equal(self._a, np.asarray(other)))

  __hash__ = None  # like the lists it replaces

  def __repr__(self) -> str:
    return f"Column({self._a.tolist()!r}, {self._a.dtype})"

  def __reduce__(self):
    return Column._view, (self._a,)


# Every sample of a query has the same prompt: one array for all of them while any is alive.
_PROMPTS: "weakref.WeakValueDictionary[bytes, Column]" = weakref.WeakValueDictionary()


def _shared_prompt(ids) -> Column:
  if isinstance(ids, Column) and ids.dtype == np.int32:
    return ids
  c = Column(ids, np.int32)
  return _PROMPTS.setdefault(c.array.tobytes(), c)


def _column(values, dtype) -> Column:
  if isinstance(values, Column) and values.dtype == dtype:
    return values
  return Column(values, dtype)


@dataclasses.dataclass
class Cell:
  code: str
  output: str  # exactly what was shown to the model
  status: str  # sandbox status category, or "limit" / "no_code"
  seconds: float = 0.0


@dataclasses.dataclass
class Trajectory:
  """Token fields may be given as any sequences of numbers; they are stored as Columns (int32
  ids, float32 log-probs: the dtypes of the sampler's outputs and of the M-step's batches)."""

  prompt_index: int
  sample_index: int
  mode: str  # "native" | "code" | "cot" (the forced decision, if any)
  prompt_ids: Column  # int32, shared by the samples of a prompt
  response_ids: Column  # int32
  logp: Column  # float32: behaviour log-prob of each response token
  source: Column  # int8: SRC_* per response token
  cells: list[Cell]
  stop_reason: str  # eos | stop | length | tool_limit
  text: str  # decoded response
  reward: float | None = None
  meta: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.prompt_ids = _shared_prompt(self.prompt_ids)
    self.response_ids = _column(self.response_ids, np.int32)
    self.logp = _column(self.logp, np.float32)
    self.source = _column(self.source, np.int8)

  def set_prompt(self, ids) -> None:
    """Puts the response under another prompt (shared like the sampler's); `logp` stays the
    one recorded under the old prompt."""
    self.prompt_ids = _shared_prompt(ids)

  def set_logp(self, values) -> None:
    """New behaviour log-probs, one per response token (e.g. re-scored under a new prompt)."""
    if len(values) != len(self.response_ids):
      raise ValueError(f"{len(values)} log-probs for {len(self.response_ids)} response tokens")
    self.logp = Column(values, np.float32)

  @property
  def loss_mask(self) -> Column:
    """1 on tokens the policy wrote (sampled or forced prefix), 0 on tool output (uint8)."""
    return Column._view((self.source.array != SRC_ENV).astype(np.uint8))

  @property
  def num_calls(self) -> int:
    return sum(1 for c in self.cells if c.status != "limit")

  @property
  def used_code(self) -> bool:
    """Whether a cell ran: a "no_code" record (an output fence with no code before it) or a
    "limit" record (the call budget was spent) is no use of code."""
    return any(c.status not in ("limit", "no_code") for c in self.cells)

  @property
  def truncated(self) -> bool:
    return self.stop_reason == "length"

  def to_json(self) -> dict:
    d = {}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      d[f.name] = v.tolist() if isinstance(v, Column) else copy.deepcopy(v)
    d["cells"] = [dataclasses.asdict(c) for c in self.cells]
    d.update(loss_mask=self.loss_mask.tolist(), num_calls=self.num_calls,
             used_code=self.used_code)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Trajectory":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    missing = names - set(kw) - {"reward", "meta"}
    if missing:
      raise ValueError(f"trajectory record is missing fields {sorted(missing)}")
    kw["cells"] = [Cell(**c) for c in kw["cells"]]
    t = cls(**kw)
    n = len(t.response_ids)
    if len(t.logp) != n or len(t.source) != n:
      raise ValueError("trajectory record: logp/source lengths differ from response_ids")
    return t


# ------------------------------------------------------------------- packed (for a gather)

_TOKEN_FIELDS = (("response_ids", np.int32), ("logp", np.float32), ("source", np.int8))


def pack(trajs: Sequence[Trajectory]) -> dict:
  """Trajectories as a few concatenated arrays (each token field end to end, with offsets;
  each distinct prompt once) plus one small tuple per trajectory of its non-token fields:
  ~9 bytes per response token to pickle or send. `unpack` inverts it exactly."""
  prompt_slot: dict[int, int] = {}  # id of a prompt Column -> its index among distinct prompts
  prompts, which = [], np.zeros(len(trajs), np.int64)
  for i, t in enumerate(trajs):
    key = id(t.prompt_ids)
    if key not in prompt_slot:
      prompt_slot[key] = len(prompts)
      prompts.append(t.prompt_ids.array)
    which[i] = prompt_slot[key]
  out = {
      "prompt_tokens": _concat(prompts, np.int32),
      "prompt_offsets": _offsets(prompts),
      "prompt_of": which,
      "offsets": _offsets([t.response_ids.array for t in trajs]),
      "records": [(t.prompt_index, t.sample_index, t.mode, t.cells, t.stop_reason, t.text,
                   t.reward, t.meta) for t in trajs],
  }
  for name, dtype in _TOKEN_FIELDS:
    out[name] = _concat([getattr(t, name).array for t in trajs], dtype)
  return out


def unpack(packed: dict) -> list[Trajectory]:
  """The trajectories `pack` packed; token fields are views into the packed arrays, and the
  samples of a prompt share one prompt array again."""
  po, off = packed["prompt_offsets"], packed["offsets"]
  prompts = [Column._view(packed["prompt_tokens"][po[j]:po[j + 1]]) for j in range(len(po) - 1)]
  out = []
  for i, (pi, si, mode, cells, stop, text, reward, meta) in enumerate(packed["records"]):
    lo, hi = off[i], off[i + 1]
    cols = {name: Column._view(packed[name][lo:hi]) for name, _ in _TOKEN_FIELDS}
    out.append(Trajectory(pi, si, mode, prompts[packed["prompt_of"][i]], cells=cells,
                          stop_reason=stop, text=text, reward=reward, meta=meta, **cols))
  return out


def _offsets(arrays: Sequence[np.ndarray]) -> np.ndarray:
  return np.concatenate([[0], np.cumsum([len(a) for a in arrays], dtype=np.int64)])


def _concat(arrays: Sequence[np.ndarray], dtype) -> np.ndarray:
  return np.concatenate(arrays).astype(dtype, copy=False) if len(arrays) else np.zeros(0, dtype)


def write_jsonl(path: str, trajectories: Iterable[Trajectory]) -> None:
  """Writes atomically: a crash leaves either the old file or the complete new one."""
  fileio.write_jsonl(path, (t.to_json() for t in trajectories))


def read_jsonl(path: str) -> list[Trajectory]:
  out = []
  for lineno, obj in fileio.iter_jsonl(path):
    try:
      out.append(Trajectory.from_json(obj))
    except (ValueError, TypeError, KeyError) as e:
      raise fileio.DataError(f"{path}:{lineno}: {e}") from None
  return out
