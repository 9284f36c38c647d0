"""The host-side records of one rollout call: each row's phase, the hand-offs from the loop to
the host work, the plan all processes agree on each round, and the call's result.

A row moves through the phases

    DECODING --(device pauses it, host collects its tokens)--> HANDED
    HANDED --(host reads a cell and submits it)--> IN_SANDBOX --(result back)--> SPLICE_READY
    HANDED --(limit / no-code message, or no pause string after all)--> SPLICE_READY
    SPLICE_READY --(text spliced into its cache)--> DECODING
    SPLICE_READY --(no room for the text in the response budget: "length")--> DONE
    DECODING --(device finishes it)--> DONE
    DECODING --(a stop string the decoded text does not confirm)--> SPLICE_READY ("")

A DONE row leaves its slot the round it is collected; a `Finished` hand-off carries it to the
host work that builds its trajectory while the device decodes the other rows.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from aci_jax.parallel import multihost
from aci_jax.rollout.trajectory import Cell, Trajectory

if TYPE_CHECKING:
  from aci_jax.rollout.engine import Request


class Phase(enum.Enum):
  # On the device: running, waiting for KV pages, or paused / finished and not yet collected.
  DECODING = enum.auto()
  HANDED = enum.auto()  # paused for a tool; its tokens are on the host, its cell not yet read
  IN_SANDBOX = enum.auto()  # its cell runs (`Row.future`)
  SPLICE_READY = enum.auto()  # `Row.splice` (tool output, a message, "" to resume) waits
  DONE = enum.auto()  # finished: by the device, or by the host (`Row.end_reason`)


@dataclasses.dataclass(eq=False)  # identity: a row is one rollout, whatever its fields hold
class Row:
  req: Request
  index: int  # position of its request in the call
  phase: Phase = Phase.DECODING
  cells: list[Cell] = dataclasses.field(default_factory=list)
  text: str = ""  # IN_SANDBOX: the response at the pause (the output is rendered after it)
  code: str = ""  # IN_SANDBOX: the cell's code
  future: Any = None  # IN_SANDBOX: Future[CellResult]
  splice: str = ""  # SPLICE_READY: the text to append
  end_reason: int | None = None  # DONE by the host: the stop reason it gets

  @property
  def session(self) -> tuple:
    """The sandbox session of this rollout (its cells share one interpreter)."""
    return (self.req.prompt_index, self.req.sample_index, self.req.mode, id(self))


@dataclasses.dataclass
class Paused:
  """A row the device paused for a tool, with its response so far (ending in the pause
  string); the host reads and submits its cell."""
  row: Row
  tokens: np.ndarray


@dataclasses.dataclass
class Finished:
  """A finished row's response; the host builds its trajectory."""
  row: Row
  tokens: np.ndarray
  logp: np.ndarray
  source: np.ndarray
  reason: int  # sampler.REASON_*


@dataclasses.dataclass(frozen=True)
class RoundPlan:
  """The compiled calls of one round, as chunk widths (0: the call is not made). Every process
  runs the same calls with the same shapes, so the plan is the maximum over processes: a
  process with nothing to splice still takes part in another's splice with all-invalid rows."""
  prompt: int = 0  # prefill of the new rows' prompts
  prefix: int = 0  # their forced response prefixes
  reprefill: int = 0  # rows re-run before a splice (resume_mode="reprefill")
  splice: int = 0  # tool output spliced into paused rows
  busy: bool = False  # requests or rows left on some process

  def agreed(self) -> RoundPlan:
    """This process's plan merged with every other's (one small all-gather)."""
    if jax.process_count() == 1:
      return self
    *widths, busy = multihost.allgather_ints(dataclasses.astuple(self)).max(axis=0).tolist()
    return RoundPlan(*widths, busy=bool(busy))


@dataclasses.dataclass
class RolloutStats:
  """Timing and counts of one `run` / `run_local` call (this process's rows)."""
  wall_s: float = 0.0
  device_idle_s: float = 0.0  # no compiled call in flight
  cell_wait_s: float = 0.0  # of which: blocked because every live row waits for a cell
  decode_calls: int = 0
  decode_steps: int = 0
  extend_calls: int = 0
  cells: int = 0
  tokens: int = 0
  # Paged KV cache: times a row waited for pages (a decode call it ended waiting, a prompt
  # or splice put off to a later round).
  page_waits: int = 0

  @property
  def idle_fraction(self) -> float:
    return self.device_idle_s / self.wall_s if self.wall_s else 0.0


@dataclasses.dataclass
class RolloutResult:
  trajectories: list[Trajectory]  # one per request, in request order
  stats: RolloutStats  # of this call only
