"""Host side: a non-blocking executor for model-written cells, backed by the sandbox server.

    with Sandbox(SandboxConfig(timeout_s=5)) as sb:
      fut = sb.submit("traj-17", "import sympy\\nsympy.factor(x**2-1)")   # returns at once
      ...                                                                 # device keeps working
      fut.result().output                                                 # text for the model
      sb.close_session("traj-17")

One background thread talks to the server; futures resolve on that thread. submit() blocks only
for backpressure (more than max_pending unfinished cells).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref

from aci_jax.sandbox import display, protocol
from aci_jax.sandbox.config import CellResult, SandboxConfig, Status

log = logging.getLogger("aci_jax.sandbox")

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The server must not import the aci_jax package itself (it may one day import JAX): register a
# bare package object so only aci_jax.sandbox.* modules load.
_BOOT = ("import sys,types;p=types.ModuleType('aci_jax');p.__path__=[sys.argv[3]+'/aci_jax'];"
         "sys.modules['aci_jax']=p;from aci_jax.sandbox.server import main;main()")
# The server's whole environment: nothing of the host's variables reaches it or its children.
SERVER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
              "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
_START_TIMEOUT_S = 120.0
_MAX_RESTARTS = 5  # consecutive failed starts before the pool gives up


class SandboxUnavailable(RuntimeError):
  """The server could not start with the requested isolation."""


@dataclasses.dataclass(eq=False)
class _Pending:
  cid: int
  session: "_Session"
  code: str
  future: concurrent.futures.Future
  t_submit: float


@dataclasses.dataclass(eq=False)
class _Session:
  key: object
  sid: int = 0                 # server session id of the live process (0: none)
  live: bool = False           # believed to have a live persistent process
  busy: bool = False           # a cell of this session is at the server
  closing: bool = False
  history: list = dataclasses.field(default_factory=list)  # [(code, succeeded)]
  queue: collections.deque = dataclasses.field(default_factory=collections.deque)


class _Stats:
  """Counters per status and latency percentiles over the last `window` cells."""

  def __init__(self, window: int = 100_000):
    self.counts = collections.Counter()
    self.latency = collections.deque(maxlen=window)
    self.exec_s = collections.deque(maxlen=window)
    self.restarts = 0

  def add(self, r: CellResult) -> None:
    self.counts[r.status.value] += 1
    self.latency.append(r.latency)
    self.exec_s.append(r.seconds)

  @staticmethod
  def _pct(values, q: float) -> float:
    if not values:
      return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]

  def snapshot(self) -> dict:
    out = {"sandbox/cells": sum(self.counts.values()), "sandbox/restarts": self.restarts}
    for s in Status:
      out[f"sandbox/status/{s.value}"] = self.counts.get(s.value, 0)
    for name, vals in (("latency", self.latency), ("exec", self.exec_s)):
      for q in (0.5, 0.9, 0.99):
        out[f"sandbox/{name}_p{int(q * 100)}_s"] = self._pct(vals, q)
      out[f"sandbox/{name}_max_s"] = max(vals) if vals else 0.0
    return out


def _claim_uid_range(base: int, span: int) -> tuple[int, int]:
  """A per-instance uid block, claimed with an flock so concurrent pools never share uids."""
  d = os.path.join(tempfile.gettempdir(), "aci_sandbox_uids")
  os.makedirs(d, mode=0o700, exist_ok=True)
  for k in range(4096):
    fd = os.open(os.path.join(d, f"{k}.lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return base + k * span, fd
    except BlockingIOError:
      os.close(fd)
  raise SandboxUnavailable("no free sandbox uid range")


class Sandbox:
  """Executor for (session, code) cells. Thread-safe; use as a context manager."""

  def __init__(self, config: SandboxConfig | None = None, **overrides):
    cfg = dataclasses.replace(config or SandboxConfig(), **overrides).resolved()
    self._uid_lock_fd = -1
    if os.geteuid() == 0:
      span = cfg.max_sessions + 512
      base, self._uid_lock_fd = _claim_uid_range(cfg.uid_base, span)
      cfg = dataclasses.replace(cfg, uid_base=base)
      self.uid_range = (base, base + span)
    else:
      self.uid_range = (os.geteuid(), os.geteuid() + 1)
    self.config = cfg
    self._lock = threading.Lock()
    self._room = threading.Condition(self._lock)
    self._sessions: dict[object, _Session] = {}
    self._by_sid: dict[int, _Session] = {}
    self._lru: collections.OrderedDict[int, _Session] = collections.OrderedDict()
    self._ready: collections.deque[_Session] = collections.deque()
    self._inflight: dict[int, _Pending] = {}
    self._unfinished = 0
    self._ids = itertools.count(1)
    self._stats = _Stats()
    self._closed = False
    self._broken: str | None = None
    self._root = tempfile.mkdtemp(prefix="aci_sandbox_")
    os.chmod(self._root, 0o711)  # session uids must reach their own directory inside
    self._wake_r, self._wake_w = os.pipe()
    os.set_blocking(self._wake_w, False)
    os.set_blocking(self._wake_r, False)
    self._proc: subprocess.Popen | None = None
    self.isolation: dict = {}
    try:
      self._start_server()
    except BaseException:
      self._cleanup_files()
      raise
    log.info("sandbox isolation: %s", json.dumps(self.isolation))
    self._thread = threading.Thread(target=self._io_loop, name="aci-sandbox-io", daemon=True)
    self._thread.start()
    # A forgotten shutdown() still cleans up, but only in this process: a forked child of the
    # host must not stop the parent's server through the pipes it inherited.
    atexit.register(_shutdown_at_exit, weakref.ref(self), os.getpid())

  # --- public API -----------------------------------------------------------------------------
  def submit(self, session, code: str, *, block: bool = True,
             timeout: float | None = None) -> concurrent.futures.Future:
    """Queues one cell of `session` (cells of a session run in submission order).

    Returns a Future[CellResult] at once; blocks (or raises queue.Full when block=False) only
    while max_pending cells are unfinished.
    """
    if not isinstance(code, str):
      raise TypeError(f"code must be str, got {type(code).__name__}")
    fut = concurrent.futures.Future()
    with self._room:
      if self._closed:
        raise RuntimeError("sandbox is shut down")
      if not self._room.wait_for(lambda: self._unfinished < self.config.max_pending or
                                 self._closed, timeout=timeout if block else 0):
        raise queue.Full("sandbox backpressure: max_pending cells unfinished")
      if self._closed:
        raise RuntimeError("sandbox is shut down")
      if self._broken:
        r = CellResult(session, Status.SANDBOX_FAILURE, f"SandboxFailure: {self._broken}", 0.0,
                       detail=self._broken)
        self._stats.add(r)
        fut.set_result(r)
        return fut
      s = self._sessions.get(session)
      if s is None:
        s = self._sessions[session] = _Session(session)
      s.queue.append(_Pending(next(self._ids), s, code, fut, time.monotonic()))
      self._unfinished += 1
      if not s.busy and len(s.queue) == 1:
        self._ready.append(s)
    self._wake()
    return fut

  def run(self, session, code: str) -> CellResult:
    """Blocking convenience: submit and wait."""
    return self.submit(session, code).result()

  def close_session(self, session) -> None:
    """Ends a trajectory: its process is killed once its queued cells finished. The key is
    free at once: a later submit() with it starts a new session."""
    with self._lock:
      s = self._sessions.pop(session, None)
      if s is None:
        return
      s.closing = True
      if not s.busy and not s.queue:
        self._drop_session(s)
    self._wake()

  def _queued_sessions(self) -> set:
    """Every session with cells not yet at the server (closed ones included)."""
    return ({s for s in self._sessions.values() if s.queue} |
            {s for s in self._ready if s.queue})

  def metrics(self, reset: bool = False) -> dict:
    """Flat scalars for TensorBoard/JSONL: counts per status, latency percentiles (s)."""
    with self._lock:
      m = self._stats.snapshot()
      m["sandbox/live_sessions"] = len(self._lru)
      if reset:
        restarts = self._stats.restarts
        self._stats = _Stats()
        self._stats.restarts = restarts
    return m

  def process_ids(self) -> dict:
    """Pids of the server and zygote (for tests and monitoring)."""
    return {"server": self._proc.pid if self._proc else None,
            "zygote": self.isolation.get("zygote_pid")}

  def shutdown(self) -> None:
    """Stops the server; unfinished cells resolve as sandbox_failure. No process survives."""
    with self._room:
      if self._closed:
        return
      self._closed = True
      self._room.notify_all()
    self._wake()
    self._thread.join(timeout=30)
    self._stop_server()
    failed = []
    with self._lock:
      for p in list(self._inflight.values()):
        failed.append((p, "the sandbox was shut down"))
      self._inflight.clear()
      for s in self._queued_sessions():
        failed.extend((p, "the sandbox was shut down") for p in s.queue)
        s.queue.clear()
    self._resolve([self._failure(p, why) for p, why in failed])
    self._cleanup_files()

  def __enter__(self) -> "Sandbox":
    return self

  def __exit__(self, *exc) -> None:
    self.shutdown()

  # --- server process -------------------------------------------------------------------------
  def _start_server(self) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(self.config.to_json()),
         self._root, _PKG_PARENT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=SERVER_ENV, cwd="/",
        close_fds=True, start_new_session=True)
    reader = protocol.FrameReader(1 << 30)
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + _START_TIMEOUT_S
    msgs: list[dict] = []
    while not msgs:
      left = deadline - time.monotonic()
      sel = selectors.DefaultSelector()
      sel.register(fd, selectors.EVENT_READ)
      ready = sel.select(max(0.0, left))
      sel.close()
      data = os.read(fd, 1 << 16) if ready else b""
      if not data:
        self._kill_proc(proc)
        raise SandboxUnavailable("sandbox server did not start" +
                                 ("" if ready else " (timed out)"))
      msgs = reader.feed(data)
    if msgs[0].get("op") != "hello":
      self._kill_proc(proc)
      raise SandboxUnavailable(f"sandbox server failed: {msgs[0].get('detail')}")
    os.set_blocking(fd, False)
    os.set_blocking(proc.stdin.fileno(), False)
    self._proc = proc
    self._reader = reader
    self._obuf = bytearray()
    self.isolation = msgs[0]["report"]

  @staticmethod
  def _kill_proc(proc: subprocess.Popen) -> None:
    """SIGKILL the server's process group (server + zygote); sessions die with the zygote."""
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    proc.wait()
    for f in (proc.stdin, proc.stdout):
      try:
        f.close()
      except OSError:
        pass

  def _stop_server(self) -> None:
    proc = self._proc
    if proc is None:
      return
    self._proc = None
    try:
      os.set_blocking(proc.stdin.fileno(), True)
      protocol.write_all(proc.stdin.fileno(), bytes(self._obuf) +
                         protocol.encode({"op": "shutdown"}))
      proc.stdin.close()
    except (OSError, ValueError):
      pass
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    self._kill_proc(proc)
    self._sweep_uids()

  def _sweep_uids(self) -> None:
    """Last line of defence after a crash/shutdown: no process of our uid block survives."""
    if os.geteuid() != 0:
      return
    lo, hi = self.uid_range
    for _ in range(20):
      found = False
      for pid in pids_with_uid(lo, hi):
        found = True
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      if not found:
        return
      time.sleep(0.05)

  def _cleanup_files(self) -> None:
    # What a session left here (seccomp tier) may have any shape: remove_tree cannot recurse
    # into a RecursionError, and a failure must not break the host's shutdown.
    from aci_jax.sandbox.zygote import remove_tree
    try:
      remove_tree(self._root)
    except Exception as e:  # noqa: BLE001
      log.warning("sandbox: could not remove %s: %s", self._root, e)
    for fd in (self._wake_r, self._wake_w, self._uid_lock_fd):
      if fd >= 0:
        try:
          os.close(fd)
        except OSError:
          pass
    self._wake_r = self._wake_w = self._uid_lock_fd = -1

  # --- I/O thread -----------------------------------------------------------------------------
  def _wake(self) -> None:
    try:
      os.write(self._wake_w, b"x")
    except (BlockingIOError, OSError):
      pass

  def _send(self, msg: dict) -> None:
    self._obuf += protocol.encode(msg)

  def _io_loop(self) -> None:
    sel = selectors.DefaultSelector()
    sel.register(self._wake_r, selectors.EVENT_READ, "wake")
    registered = None
    while True:
      if self._closed:
        break
      proc = self._proc
      if proc is not None and registered is not proc:
        if registered is not None:
          for f in (registered.stdout, registered.stdin):
            try:
              sel.unregister(f.fileno())
            except (KeyError, ValueError, OSError):
              pass
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
        registered = proc
      done: list = []
      with self._lock:
        self._dispatch()
      # Under the lock: os.write holds a buffer export of _obuf, and _send (reached from
      # close_session on a caller's thread) resizes it; unguarded, that raises BufferError.
      with self._lock:
        if proc is not None and self._obuf:
          try:
            n = os.write(proc.stdin.fileno(), self._obuf)
            del self._obuf[:n]
          except BlockingIOError:
            pass
          except OSError:
            self._obuf.clear()
        want_write = proc is not None and bool(self._obuf)
      try:
        key = sel.get_key(proc.stdin.fileno()) if proc is not None else None
      except KeyError:
        key = None
      if want_write and key is None:
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, "in")
      elif not want_write and key is not None:
        sel.unregister(proc.stdin.fileno())
      crashed = None
      for key, _ in sel.select(1.0):
        if key.data == "wake":
          try:
            os.read(self._wake_r, 1 << 16)
          except BlockingIOError:
            pass
        elif key.data == "out" and proc is not None:
          try:
            data = os.read(proc.stdout.fileno(), 1 << 20)
          except BlockingIOError:
            continue
          if not data:
            crashed = "the sandbox server exited"
            continue
          try:
            msgs = self._reader.feed(data)
          except ValueError as e:
            crashed = f"bad frame from the sandbox server: {e}"
            continue
          with self._lock:
            for m in msgs:
              if m.get("op") == "fatal":
                crashed = f"the sandbox server failed: {m.get('detail')}"
              else:
                done.extend(self._on_message(m))
            self._room.notify_all()
      self._resolve(done)
      if crashed and not self._closed:
        for f in (proc.stdout, proc.stdin):
          try:
            sel.unregister(f.fileno())
          except (KeyError, ValueError, OSError):
            pass
        registered = None
        self._restart(crashed)
    sel.close()

  def _restart(self, why: str) -> None:
    """In-flight cells become sandbox_failure (never retried); live sessions will be rebuilt."""
    log.warning("sandbox server crashed (%s); restarting", why)
    proc, self._proc = self._proc, None
    if proc is not None:
      self._kill_proc(proc)
    self._sweep_uids()
    with self._lock:
      failed = [self._failure(p, why) for p in self._inflight.values()]
      for p in self._inflight.values():
        p.session.busy = False
        if p.session.queue:
          self._ready.append(p.session)
        elif p.session.closing:
          self._drop_session(p.session, send=False)
      self._inflight.clear()
      for s in list(self._lru.values()):
        s.live = False
      self._lru.clear()
      self._by_sid.clear()
      self._stats.restarts += 1
      self._room.notify_all()
    self._resolve(failed)
    for attempt in range(_MAX_RESTARTS):
      try:
        self._start_server()
        return
      except SandboxUnavailable as e:
        why = str(e)
        time.sleep(0.2 * (attempt + 1))
    with self._lock:
      self._broken = f"sandbox server could not be restarted: {why}"
      failed = []
      for s in self._queued_sessions():
        failed.extend(s.queue)
        s.queue.clear()
      self._ready.clear()
    self._resolve([self._failure(p, self._broken) for p in failed])

  # --- scheduling (called with the lock held) -------------------------------------------------
  def _dispatch(self) -> None:
    cfg = self.config
    limit = 2 * cfg.max_workers  # one batch running, one queued at the server
    while self._ready and len(self._inflight) < limit and self._proc is not None:
      s = self._ready.popleft()
      if s.busy or not s.queue:
        continue
      p = s.queue.popleft()
      # A cell re-queued after its process was lost ("lost" below) is already RUNNING: asking
      # again raises in concurrent.futures and would kill this I/O thread.
      if not p.future.running() and not p.future.set_running_or_notify_cancel():
        self._unfinished -= 1
        if s.queue:
          self._ready.append(s)
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
          self._by_sid.pop(s.sid, None)
        s.sid = next(self._ids)
        self._by_sid[s.sid] = s
        if not oneshot:
          s.live = True
          self._lru[s.sid] = s
          self._evict()
      else:
        self._lru.move_to_end(s.sid)
      s.busy = True
      self._inflight[p.cid] = p
      self._send({"op": "cell", "cid": p.cid, "sid": s.sid, "code": p.code,
                  "prelude": prelude, "oneshot": oneshot, "new": new})

  def _evict(self) -> None:
    """Too many live persistent processes: close the least recently used idle ones (they are
    rebuilt by replay if they get another cell)."""
    over = len(self._lru) - self.config.max_sessions
    for sid, s in list(self._lru.items()):
      if over <= 0:
        break
      if not s.busy:
        self._send({"op": "close", "sid": sid})
        del self._lru[sid]
        s.live = False
        over -= 1

  def _drop_session(self, s: _Session, send: bool = True) -> None:
    if s.sid and s.live and send:
      self._send({"op": "close", "sid": s.sid})
    self._lru.pop(s.sid, None)
    self._by_sid.pop(s.sid, None)
    s.live = False
    if self._sessions.get(s.key) is s:
      del self._sessions[s.key]

  def _on_message(self, m: dict) -> list:
    op = m.get("op")
    if op == "died":
      s = self._by_sid.get(m.get("sid"))
      if s is not None and s.sid == m.get("sid"):
        s.live = False
        self._lru.pop(s.sid, None)
      return []
    p = self._inflight.pop(m.get("cid"), None)
    if p is None:
      return []
    s = p.session
    s.busy = False
    if op == "lost":  # the process died before the cell reached it: run it on a rebuilt one
      s.live = False
      self._lru.pop(s.sid, None)
      s.queue.appendleft(p)
      self._ready.appendleft(s)
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
      self._lru.pop(s.sid, None)
    if s.queue:
      self._ready.append(s)
    elif s.closing:
      self._drop_session(s)
    return [(p, r)]

  def _failure(self, p: _Pending, why: str):
    r = CellResult(p.session.key, Status.SANDBOX_FAILURE, f"SandboxFailure: {why}", 0.0,
                   latency=time.monotonic() - p.t_submit, detail=why)
    return (p, r)

  def _resolve(self, done: list) -> None:
    if not done:
      return
    with self._room:
      for _, r in done:
        self._stats.add(r)
      self._unfinished -= len(done)
      self._room.notify_all()
    for p, r in done:
      if not p.future.done():
        p.future.set_result(r)


def pids_with_uid(lo: int, hi: int, zombies: bool = False) -> list[int]:
  """Pids of processes whose real uid is in [lo, hi), from /proc (zombies only if asked).
  With `Sandbox.uid_range` this lists every process a pool's sessions own."""
  out = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
      continue
    if lo <= int(fields["Uid"].split()[0]) < hi and (
        zombies or not fields["State"].strip().startswith("Z")):
      out.append(int(name))
  return out


def _shutdown_at_exit(ref: "weakref.ref[Sandbox]", owner_pid: int) -> None:
  sb = ref()
  if sb is not None and os.getpid() == owner_pid:
    sb.shutdown()
