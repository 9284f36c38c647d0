"""Which cell the host sends to the server next: the pool's sessions, their queues of cells, the
live persistent processes (least recently used first out), the cells at the server, and what a
server message means for them. Not thread-safe: the pool calls it with its lock held."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import time
from typing import Callable

from aci_jax.sandbox import display
from aci_jax.sandbox.config import CellResult, SandboxConfig, Status


@dataclasses.dataclass(eq=False)
class Pending:
  cid: int
  session: "Session"
  code: str
  future: concurrent.futures.Future
  t_submit: float


@dataclasses.dataclass(eq=False)
class Session:
  key: object
  sid: int = 0                 # server session id of the live process (0: none)
  live: bool = False           # believed to have a live persistent process
  busy: bool = False           # a cell of this session is at the server
  closing: bool = False
  history: list = dataclasses.field(default_factory=list)  # [(code, succeeded)]
  queue: collections.deque = dataclasses.field(default_factory=collections.deque)


def failure(p: Pending, why: str) -> tuple[Pending, CellResult]:
  """A cell that will never run: resolved as sandbox_failure."""
  r = CellResult(p.session.key, Status.SANDBOX_FAILURE, f"SandboxFailure: {why}", 0.0,
                 latency=time.monotonic() - p.t_submit, detail=why)
  return (p, r)


class Scheduler:
  """Sessions and cells of one pool; `send` queues a message to the server."""

  def __init__(self, config: SandboxConfig, send: Callable[[dict], None]):
    self.config = config
    self._send = send
    self.sessions: dict[object, Session] = {}
    self.by_sid: dict[int, Session] = {}
    self.lru: collections.OrderedDict[int, Session] = collections.OrderedDict()
    self.ready: collections.deque[Session] = collections.deque()
    self.inflight: dict[int, Pending] = {}
    self.unfinished = 0
    self.ids = itertools.count(1)

  def add(self, session, code: str, future: concurrent.futures.Future) -> None:
    """Queues one cell of `session` behind its earlier ones."""
    s = self.sessions.get(session)
    if s is None:
      s = self.sessions[session] = Session(session)
    s.queue.append(Pending(next(self.ids), s, code, future, time.monotonic()))
    self.unfinished += 1
    if not s.busy and len(s.queue) == 1:
      self.ready.append(s)

  def close(self, session) -> None:
    """The key is free at once; the process goes once the session's queued cells finished."""
    s = self.sessions.pop(session, None)
    if s is None:
      return
    s.closing = True
    if not s.busy and not s.queue:
      self.drop(s)

  def queued_sessions(self) -> set:
    """Every session with cells not yet at the server (closed ones included)."""
    return ({s for s in self.sessions.values() if s.queue} |
            {s for s in self.ready if s.queue})

  def take_queued(self) -> list[Pending]:
    """Removes and returns every cell not yet at the server."""
    out = []
    for s in self.queued_sessions():
      out.extend(s.queue)
      s.queue.clear()
    self.ready.clear()
    return out

  def server_lost(self) -> list[Pending]:
    """The server died: returns the cells it had (they never retry); every live process is
    gone, so persistent sessions will be rebuilt by replay."""
    lost = list(self.inflight.values())
    for p in lost:
      p.session.busy = False
      if p.session.queue:
        self.ready.append(p.session)
      elif p.session.closing:
        self.drop(p.session, send=False)
    self.inflight.clear()
    for s in list(self.lru.values()):
      s.live = False
    self.lru.clear()
    self.by_sid.clear()
    return lost

  def dispatch(self) -> None:
    """Sends ready cells, up to one batch running and one queued at the server."""
    cfg = self.config
    limit = 2 * cfg.max_workers
    while self.ready and len(self.inflight) < limit:
      s = self.ready.popleft()
      if s.busy or not s.queue:
        continue
      p = s.queue.popleft()
      # A cell re-queued after its process was lost ("lost" below) is already RUNNING: asking
      # again raises in concurrent.futures and would kill the pool's I/O thread.
      if not p.future.running() and not p.future.set_running_or_notify_cancel():
        self.unfinished -= 1
        if s.queue:
          self.ready.append(s)
        continue
      prelude: list[str] = []
      oneshot = cfg.mode != "persistent"
      if cfg.mode == "replay":
        prelude = display.replay_prelude(s.history)
      new = oneshot or not s.live
      if new:
        if cfg.mode == "persistent" and s.history and cfg.persistent_recovery:
          prelude = display.replay_prelude(s.history)
        if s.sid:
          self.by_sid.pop(s.sid, None)
        s.sid = next(self.ids)
        self.by_sid[s.sid] = s
        if not oneshot:
          s.live = True
          self.lru[s.sid] = s
          self._evict()
      else:
        self.lru.move_to_end(s.sid)
      s.busy = True
      self.inflight[p.cid] = p
      self._send({"op": "cell", "cid": p.cid, "sid": s.sid, "code": p.code,
                  "prelude": prelude, "oneshot": oneshot, "new": new})

  def _evict(self) -> None:
    """Too many live persistent processes: close the least recently used idle ones (they are
    rebuilt by replay if they get another cell)."""
    over = len(self.lru) - self.config.max_sessions
    for sid, s in list(self.lru.items()):
      if over <= 0:
        break
      if not s.busy:
        self._send({"op": "close", "sid": sid})
        del self.lru[sid]
        s.live = False
        over -= 1

  def drop(self, s: Session, send: bool = True) -> None:
    if s.sid and s.live and send:
      self._send({"op": "close", "sid": s.sid})
    self.lru.pop(s.sid, None)
    self.by_sid.pop(s.sid, None)
    s.live = False
    if self.sessions.get(s.key) is s:
      del self.sessions[s.key]

  def on_message(self, m: dict) -> list[tuple[Pending, CellResult]]:
    """The cells a server message finishes, with their results."""
    op = m.get("op")
    if op == "died":
      s = self.by_sid.get(m.get("sid"))
      if s is not None and s.sid == m.get("sid"):
        s.live = False
        self.lru.pop(s.sid, None)
      return []
    p = self.inflight.pop(m.get("cid"), None)
    if p is None:
      return []
    s = p.session
    s.busy = False
    if op == "lost":  # the process died before the cell reached it: run it on a rebuilt one
      s.live = False
      self.lru.pop(s.sid, None)
      s.queue.appendleft(p)
      self.ready.appendleft(s)
      return []
    if op != "result":
      return []
    status = Status(m["status"])
    r = CellResult(s.key, status, m["output"], float(m["seconds"]),
                   latency=time.monotonic() - p.t_submit, detail=m.get("detail", ""),
                   stdout_bytes=int(m.get("stdout_bytes", 0)), stderr_tail=m.get("stderr", ""))
    if status != Status.SANDBOX_FAILURE:
      s.history.append((p.code, status == Status.OK))
    if not m.get("alive") and self.config.mode == "persistent":
      s.live = False
      self.lru.pop(s.sid, None)
    if s.queue:
      self.ready.append(s)
    elif s.closing:
      self.drop(s)
    return [(p, r)]
