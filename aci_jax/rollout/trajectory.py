"""The trajectory record: everything the E-step, the M-step and evaluation need from a rollout.

Token-level fields are aligned with `response_ids`. `source` says who wrote each token
(0 sampled by the policy, 1 forced prefix, 2 environment/tool output); the loss mask is derived
from it, so tool output can never be trained on by accident.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from aci_jax import fileio

SRC_SAMPLED, SRC_FORCED, SRC_ENV = 0, 1, 2


@dataclasses.dataclass
class Cell:
  code: str
  output: str  # exactly what was shown to the model
  status: str  # sandbox status category, or "limit" / "no_code"
  seconds: float = 0.0


@dataclasses.dataclass
class Trajectory:
  prompt_index: int
  sample_index: int
  mode: str  # "native" | "code" | "cot" (the forced decision, if any)
  prompt_ids: list[int]
  response_ids: list[int]
  logp: list[float]  # behaviour log-prob of each response token
  source: list[int]  # SRC_* per response token
  cells: list[Cell]
  stop_reason: str  # eos | stop | length | tool_limit
  text: str  # decoded response
  reward: float | None = None
  meta: dict = dataclasses.field(default_factory=dict)

  @property
  def loss_mask(self) -> list[int]:
    """1 on tokens the policy wrote (sampled or forced prefix), 0 on tool output."""
    return [0 if s == SRC_ENV else 1 for s in self.source]

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
    d = dataclasses.asdict(self)
    d.update(loss_mask=self.loss_mask, num_calls=self.num_calls, used_code=self.used_code)
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
