"""The sandbox server: one event loop between the host and the session processes.

Started by the host with a clean exec (never a fork of the JAX process). At start it forks the
zygote, which holds the warm image. The server itself only moves bytes: cells in, bounded output
capture, wall-clock deadlines, results out. Protocol with the host: length-prefixed JSON frames
on stdin/stdout (see protocol.py).

The event loop stays one file (~450 lines) on purpose: every handler here (host frames, zygote
messages, session pipes, deadlines, idle checks) changes the same tables (`sessions`, `busy`,
`running`, `queue`), and each cell must end exactly once, in `_finish` or `_send_result`, whatever
ends it first (its reply, its exit, its deadline, its output limit, a forged frame, a close);
split over files, no one place would show that. A session process as the loop sees it is in
server_session.py; the zygote's protocol, both ends, in zygote.py.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import selectors
import signal
import sys
import time

from aci_jax.sandbox import display, protocol
from aci_jax.sandbox.config import SandboxConfig
from aci_jax.sandbox.server_session import Cell, Session, describe_exit

EXIT_GRACE_S = 0.5   # after a child's control pipe closes, wait this long for its exit status
IDLE_CHECK_S = 1.0   # how often idle sessions are checked for work running between cells
IDLE_CPU_S = 0.2     # CPU-s an idle session may use between two checks before it is killed


class Server:
  def __init__(self, cfg: SandboxConfig, sandbox_root: str):
    self.cfg = cfg
    self.root = sandbox_root
    self.keep = max(4096, 4 * cfg.max_chars + 64)
    self.sel = selectors.DefaultSelector()
    self.sessions: dict[int, Session] = {}
    self.queue: collections.deque[Cell] = collections.deque()
    self.running = 0
    self.busy: dict[int, Session] = {}  # sessions with a cell in progress
    self.by_zid: dict[int, Session] = {}  # every process, by the zygote's id for it
    self.zids = itertools.count(1)
    self.spares: collections.deque[Session] = collections.deque()  # forked, idle, no session
    self.free_uids = collections.deque(range(cfg.uid_base + 1,
                                             cfg.uid_base + 1 + cfg.max_sessions + 256))
    self.host_in = sys.stdin.fileno()
    self.host_out = sys.stdout.fileno()
    self.host_reader = protocol.FrameReader(1 << 30)
    self.obuf = bytearray()
    self.stopping = False
    self.zygote = None  # the zygote's link (zygote.ZygoteLink), once it is forked

  # --- plumbing -------------------------------------------------------------------------------
  def start_zygote(self) -> None:
    from aci_jax.sandbox.zygote import ZygoteLink
    self.zygote = ZygoteLink()
    self.report = self.zygote.start(self.cfg, self.root)
    self.report["server_pid"] = os.getpid()

  def to_host(self, msg: dict) -> None:
    self.obuf += protocol.encode(msg)
    self._flush_host()

  def _flush_host(self) -> None:
    while self.obuf:
      try:
        n = os.write(self.host_out, self.obuf)
      except BlockingIOError:
        break
      del self.obuf[:n]
    self._set_events(self.host_out, "hostout", selectors.EVENT_WRITE if self.obuf else 0)

  def _set_events(self, fd: int, data, events: int) -> None:
    try:
      key = self.sel.get_key(fd)
    except KeyError:
      if events:
        self.sel.register(fd, events, data)
      return
    if not events:
      self.sel.unregister(fd)
    elif key.events != events:
      self.sel.modify(fd, events, data)

  # --- sessions -------------------------------------------------------------------------------
  def _new_process(self) -> Session:
    if not self.free_uids:
      raise RuntimeError("no free session uid (too many live sessions)")
    s = Session(next(self.zids), self.free_uids.popleft())
    self.by_zid[s.zid] = s
    self.zygote.send("spawn", s.zid, uid=s.uid)
    return s

  def _spawn(self, sid: int) -> Session:
    """A process for a new session: a pre-forked spare if one is ready (its fork and
    lock-down are then off the cell's latency), else a fresh one."""
    s = self.spares.popleft() if self.spares else self._new_process()
    s.sid = sid
    self.sessions[sid] = s
    self._top_up_spares()
    return s

  def _top_up_spares(self) -> None:
    # Only refilled when one is taken, so an environment where sessions die at start-up
    # cannot turn this into a spawn loop.
    while len(self.spares) < self.cfg.spares and len(self.free_uids) > 64:
      try:
        self.spares.append(self._new_process())
      except (RuntimeError, OSError):
        return

  def _attach(self, s: Session, pid: int, fds: list[int], tasks: str | None) -> None:
    s.attach(self.sel, pid, fds, tasks)
    if s.dying:
      self._kill(s)
    elif s.wbuf:
      self._write_req(s)

  def _kill(self, s: Session) -> None:
    """Asks the zygote (the parent) to SIGKILL the session; uid is freed when it is reaped."""
    s.dying = True
    if s.pid:
      s.close_fds(self.sel)
      self.zygote.send("kill", s.zid)

  def _write_req(self, s: Session) -> None:
    if s.req < 0:
      return
    try:
      while s.wbuf:
        n = os.write(s.req, s.wbuf)
        del s.wbuf[:n]
    except BlockingIOError:
      pass
    except OSError:  # the child is gone; its exit will finish the cell
      s.wbuf.clear()
    self._set_events(s.req, ("req", s), selectors.EVENT_WRITE if s.wbuf else 0)

  # --- cells ----------------------------------------------------------------------------------
  def on_cell(self, msg: dict) -> None:
    s = self.sessions.get(msg["sid"])
    if (s is None and not msg.get("new")) or (s is not None and (s.dying or s.cell is not None)):
      self._lost(msg["cid"], msg["sid"])
      return
    self.queue.append(Cell(msg, self.keep))
    self._pump()

  def _lost(self, cid: int, sid: int) -> None:
    """The session's process died while idle (the host has not heard yet): the cell never ran,
    and the host re-sends it to a rebuilt session instead of running it without its state."""
    self.to_host({"op": "lost", "cid": cid, "sid": sid})

  def _pump(self) -> None:
    while self.queue and self.running < self.cfg.max_workers:
      c = self.queue.popleft()
      c.t0 = time.monotonic()
      c.deadline = c.t0 + self.cfg.start_timeout_s
      if len(c.code.encode("utf-8", "replace")) > self.cfg.max_code_bytes:
        self._send_result(c, "error", f"CodeTooLong: the cell exceeds {self.cfg.max_code_bytes}"
                          " bytes", alive=c.sid in self.sessions)
        continue
      s = self.sessions.get(c.sid)
      if (s is None and not c.new) or (s is not None and s.dying):
        # Died, or condemned (killed idle, evicted, closed) while this cell waited for a
        # worker: the zygote may not have reported the exit yet, and running the cell there
        # would report our own SIGKILL as the cell's outcome. The host re-sends it instead.
        self._lost(c.cid, c.sid)
        continue
      try:
        if s is None:
          s = self._spawn(c.sid)
      except (RuntimeError, OSError) as e:
        self._send_result(c, "sandbox_failure", f"SandboxFailure: {e}", alive=False)
        continue
      self.running += 1
      s.cell = c
      self.busy[s.sid] = s
      if s.ready:
        self._start_clock(c)
      s.wbuf += protocol.encode({"op": "cell", "code": c.code, "prelude": c.prelude})
      self._write_req(s)

  def _start_clock(self, c: Cell) -> None:
    """The cell's wall clock starts when its process can run it. Until then (a new session's
    fork and set-up, which a busy zygote or a loaded machine can stretch past the cell's own
    limit) the start has its own, longer bound: a right cell is never graded as a timeout for
    the sandbox's slowness."""
    c.started = True
    c.t0 = time.monotonic()
    c.deadline = c.t0 + self.cfg.timeout_s

  def _drain(self, s: Session) -> None:
    """Reads whatever the child already wrote (it is in the pipes before its reply)."""
    for name in ("out", "err", "rep"):
      while getattr(s, name) >= 0 and self._read(s, name):
        pass

  def _finish(self, s: Session, status: str, detail: str, kill: bool) -> None:
    c = s.cell
    if c is None:
      return
    if status != "output_limit":
      self._drain(s)
      c = s.cell  # draining may have delivered the child's reply
      if c is None:
        return
    s.cell = None
    self.busy.pop(s.sid, None)
    self.running -= 1
    kill = kill or c.oneshot
    self._send_result(c, status, detail, alive=not kill)
    if kill:
      self._kill(s)
    self._pump()

  def _send_result(self, c: Cell, status: str, detail: str, alive: bool) -> None:
    cfg = self.cfg
    stdout = c.out.text(cfg.max_chars, strip=cfg.strip)
    if status == "timeout" and not detail:
      detail = cfg.timeout_text
    text = display.render(status, stdout, detail, max_chars=cfg.max_chars, strip=cfg.strip,
                          stdout_on_error=cfg.stdout_on_error, empty_text=cfg.empty_text)
    self.to_host({"op": "result", "cid": c.cid, "status": status, "output": text,
                  "detail": detail, "seconds": time.monotonic() - c.t0 if c.t0 else 0.0,
                  "alive": alive, "stdout_bytes": c.out.total,
                  "stderr": c.err.text(2000)})

  def _read(self, s: Session, name: str) -> bool:
    """One read from a session pipe; False when nothing more is available now."""
    got = s.recv(name)
    if got is None:
      return False
    data, sender = got
    if data == b"":
      s.close_one(self.sel, name)
      if name == "rep" and s.cell is not None:
        s.cell.grace = time.monotonic() + EXIT_GRACE_S  # died: wait briefly for its status
        if s.exit_status is not None:
          self._finish(s, *describe_exit(s.exit_status, s.oom), kill=True)
      return False
    if name == "rep":
      if sender != s.pid or data is None:
        # Written by another process (a child of the cell) or malformed: a forgery attempt.
        self._protocol_violation(s)
        return False
      try:
        msgs = s.reader.feed(data)
      except (ValueError, UnicodeDecodeError):
        self._protocol_violation(s)
        return False
      for m in msgs:
        self._on_reply(s, m)
      return True
    c = s.cell
    if c is None:
      s.idle_bytes += len(data)  # output from a previous cell's leftovers: never shown
      if s.idle_bytes > self.cfg.max_output_bytes:
        self._kill(s)
        return False
      return True
    (c.out if name == "out" else c.err).add(data)
    if c.out.total + c.err.total > self.cfg.max_output_bytes:
      self._finish(s, "output_limit", "OutputLimitError: the cell wrote more than "
                   f"{self.cfg.max_output_bytes} bytes", kill=True)
      return False
    return True

  def _protocol_violation(self, s: Session) -> None:
    if s.cell is not None:
      self._finish(s, "killed", "Killed: the process broke the sandbox protocol", kill=True)
    else:
      self._kill(s)  # a frame while idle: the cell's code is still running after its result

  def _on_reply(self, s: Session, m: dict) -> None:
    op = m.get("op")
    if op == "ready" and not s.ready:
      s.ready = True
      if s.cell is not None:
        self._start_clock(s.cell)
      return
    if op == "setup_error" and not s.ready:
      # Only before "ready": afterwards model code runs in the process, and a setup error
      # (sandbox_failure, not the cell's fault) would be the cell's own forgery.
      self._finish(s, "sandbox_failure", f"SandboxFailure: session setup: {m.get('detail')}",
                   kill=True)
      return
    if op != "result" or s.cell is None:
      self._protocol_violation(s)
      return
    status = m.get("status")
    if status not in ("ok", "error", "memory"):
      status = "error"
    detail = m.get("detail")
    detail = detail[:65536] if isinstance(detail, str) else ""
    s.ran = True
    s.cpu_mark = None
    self._finish(s, status, detail, kill=bool(m.get("lingering")))

  def on_zygote(self) -> None:
    got = self.zygote.recv()
    if got is None:
      return
    msg, fds = got
    op, zid = msg.get("op"), msg.get("sid")
    s = self.by_zid.get(zid)
    if op == "spawned":
      if s is None:
        for fd in fds:
          os.close(fd)
        self.zygote.send("kill", zid)
        return
      self._attach(s, msg["pid"], fds, msg.get("tasks"))
    elif op in ("spawn_error", "exit"):
      if s is None:
        return
      if op == "exit":
        s.exit_status = msg["status"]
        s.oom = bool(msg.get("oom"))
      if s.cell is not None:
        if op == "exit":
          self._finish(s, *describe_exit(s.exit_status, s.oom), kill=True)
        else:
          c, s.cell = s.cell, None
          self.busy.pop(s.sid, None)
          self.running -= 1
          self._send_result(c, "sandbox_failure", f"SandboxFailure: {msg.get('detail')}",
                            alive=False)
          self._pump()
      elif not s.dying and s.sid is not None:
        self.to_host({"op": "died", "sid": s.sid})
      s.close_fds(self.sel)
      del self.by_zid[zid]
      if s.sid is not None and self.sessions.get(s.sid) is s:
        del self.sessions[s.sid]
      if s in self.spares:
        self.spares.remove(s)
      self.free_uids.append(s.uid)
    elif op == "fatal":
      raise RuntimeError(msg.get("detail"))

  def on_host(self) -> None:
    try:
      data = os.read(self.host_in, 1 << 20)
    except BlockingIOError:
      return
    if not data:
      self.shutdown()
      return
    for msg in self.host_reader.feed(data):
      op = msg.get("op")
      if op == "cell":
        self.on_cell(msg)
      elif op == "close":
        s = self.sessions.get(msg["sid"])
        if s is not None and not s.dying:
          if s.cell is not None:
            self._finish(s, "killed", "Killed: the session was closed", kill=True)
          else:
            self._kill(s)
      elif op == "shutdown":
        self.shutdown()

  def shutdown(self) -> None:
    self.stopping = True
    raise SystemExit(0)

  def check_deadlines(self) -> float:
    now = time.monotonic()
    nxt = now + 1.0
    for s in list(self.busy.values()):
      c = s.cell
      if c is None or not c.t0:
        continue
      if c.grace:
        if now >= c.grace:
          self._finish(s, *describe_exit(s.exit_status, s.oom), kill=True)
          continue
        nxt = min(nxt, c.grace)
      if now >= c.deadline:
        if c.started:
          self._finish(s, "timeout", "", kill=True)
        else:
          self._finish(s, "sandbox_failure", "SandboxFailure: the session's process did not "
                       f"start within {self.cfg.start_timeout_s:g} s", kill=True)
      else:
        nxt = min(nxt, c.deadline)
    return max(0.0, nxt - now)

  def check_idle(self) -> None:
    """Kills idle sessions that run work between cells: more than one thread or process left
    (the runner is alone once a cell has finished), or CPU burnt since the last check (e.g. a
    timer's signal handler, or a cell that replaced the runner's read loop). The session is
    rebuilt by replay if it gets another cell."""
    for s in list(self.sessions.values()):
      if s.cell is not None or s.dying or not s.pid or not s.ran:
        continue
      usage = s.usage()
      if usage is None:
        continue  # exiting: the zygote reports it
      cpu, busy = usage
      if busy or (s.cpu_mark is not None and cpu - s.cpu_mark > IDLE_CPU_S):
        self._kill(s)
      else:
        s.cpu_mark = cpu

  def serve(self) -> None:
    os.set_blocking(self.host_in, False)
    os.set_blocking(self.host_out, False)
    self.sel.register(self.host_in, selectors.EVENT_READ, "host")
    self.sel.register(self.zygote.sock, selectors.EVENT_READ, "zygote")
    self.report["spares"] = self.cfg.spares
    self.to_host({"op": "hello", "report": self.report})
    self._top_up_spares()
    next_idle = time.monotonic() + IDLE_CHECK_S
    while True:
      timeout = self.check_deadlines()
      now = time.monotonic()
      if now >= next_idle:
        self.check_idle()
        next_idle = now + IDLE_CHECK_S
      timeout = min(timeout, max(0.0, next_idle - now))
      for key, events in self.sel.select(timeout):
        data = key.data
        if data == "host":
          self.on_host()
        elif data == "zygote":
          self.on_zygote()
        elif data == "hostout":
          self._flush_host()
        else:
          kind, s = data
          if kind == "req":
            self._write_req(s)
          elif getattr(s, kind) == key.fd:
            self._read(s, kind)

  def close(self) -> None:
    """Ends the zygote (which kills every session) and waits for it."""
    try:
      self.obuf.clear()
    finally:
      if self.zygote is not None:
        self.zygote.close()


def main() -> None:
  cfg = SandboxConfig.from_json(json.loads(sys.argv[1]))
  root = sys.argv[2]
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # the host decides when we stop
  # Ignored: a session that dies while we write its request pipe must give us EPIPE (handled
  # where we write), not kill the server with SIGPIPE and fail every cell in flight.
  signal.signal(signal.SIGPIPE, signal.SIG_IGN)
  srv = Server(cfg, root)
  code = 0
  try:
    srv.start_zygote()
    srv.serve()
  except SystemExit:
    pass
  except BaseException as e:
    code = 1
    try:
      os.set_blocking(srv.host_out, True)
      protocol.write_all(srv.host_out, bytes(srv.obuf) + protocol.encode(
          {"op": "fatal", "detail": f"{type(e).__name__}: {e}"}))
    except OSError:
      pass
  finally:
    srv.close()
  os._exit(code)
