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
import json
import logging
import os
import queue
import selectors
import subprocess
import tempfile
import threading
import time
import weakref

from aci_jax.sandbox import protocol
from aci_jax.sandbox.config import CellResult, SandboxConfig, Status
from aci_jax.sandbox.files import remove_tree
from aci_jax.sandbox.scheduler import Scheduler, failure
# SandboxUnavailable and pids_with_uid are importable from here too (package, tests, benchmarks).
from aci_jax.sandbox.server_process import (SandboxUnavailable, claim_uid_range, kill_server,
                                            pids_with_uid, start_server, stop_server,
                                            sweep_uids)

log = logging.getLogger("aci_jax.sandbox")

_MAX_RESTARTS = 5  # consecutive failed starts before the pool gives up


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


class Sandbox:
  """Executor for (session, code) cells. Thread-safe; use as a context manager."""

  def __init__(self, config: SandboxConfig | None = None, **overrides):
    cfg = dataclasses.replace(config or SandboxConfig(), **overrides).resolved()
    self._uid_lock_fd = -1
    if os.geteuid() == 0:
      span = cfg.max_sessions + 512
      base, self._uid_lock_fd = claim_uid_range(cfg.uid_base, span)
      cfg = dataclasses.replace(cfg, uid_base=base)
      self.uid_range = (base, base + span)
    else:
      self.uid_range = (os.geteuid(), os.geteuid() + 1)
    self.config = cfg
    self._lock = threading.Lock()
    self._room = threading.Condition(self._lock)
    self._sched = Scheduler(cfg, self._send)
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
      if not self._room.wait_for(lambda: self._sched.unfinished < self.config.max_pending or
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
      self._sched.add(session, code, fut)
    self._wake()
    return fut

  def run(self, session, code: str) -> CellResult:
    """Blocking convenience: submit and wait."""
    return self.submit(session, code).result()

  def close_session(self, session) -> None:
    """Ends a trajectory: its process is killed once its queued cells finished. The key is
    free at once: a later submit() with it starts a new session."""
    with self._lock:
      self._sched.close(session)
    self._wake()

  def metrics(self, reset: bool = False) -> dict:
    """Flat scalars for TensorBoard/JSONL: counts per status, latency percentiles (s)."""
    with self._lock:
      m = self._stats.snapshot()
      m["sandbox/live_sessions"] = len(self._sched.lru)
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
    with self._lock:
      unfinished = list(self._sched.inflight.values())
      self._sched.inflight.clear()
      unfinished += self._sched.take_queued()
    self._resolve([failure(p, "the sandbox was shut down") for p in unfinished])
    self._cleanup_files()

  def __enter__(self) -> "Sandbox":
    return self

  def __exit__(self, *exc) -> None:
    self.shutdown()

  # --- server process -------------------------------------------------------------------------
  def _start_server(self) -> None:
    self._proc, self._reader, self.isolation = start_server(self.config, self._root)
    self._obuf = bytearray()

  def _stop_server(self) -> None:
    proc = self._proc
    if proc is None:
      return
    self._proc = None
    stop_server(proc, bytes(self._obuf), self.uid_range)

  def _cleanup_files(self) -> None:
    # What a session left here (seccomp tier) may have any shape: remove_tree cannot recurse
    # into a RecursionError, and a failure must not break the host's shutdown.
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
        if self._proc is not None:
          self._sched.dispatch()
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
                done.extend(self._sched.on_message(m))
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
      kill_server(proc)
    sweep_uids(self.uid_range)
    with self._lock:
      failed = [failure(p, why) for p in self._sched.server_lost()]
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
      failed = self._sched.take_queued()
    self._resolve([failure(p, self._broken) for p in failed])

  def _resolve(self, done: list) -> None:
    if not done:
      return
    with self._room:
      for _, r in done:
        self._stats.add(r)
      self._sched.unfinished -= len(done)
      self._room.notify_all()
    for p, r in done:
      if not p.future.done():
        p.future.set_result(r)


def _shutdown_at_exit(ref: "weakref.ref[Sandbox]", owner_pid: int) -> None:
  sb = ref()
  if sb is not None and os.getpid() == owner_pid:
    sb.shutdown()
