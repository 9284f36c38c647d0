"""The zygote: a warm, single-threaded image (sympy, numpy, math imported) that forks sessions.

It is forked by the server before the server has seen any cell, and it never receives cell code
or output, so a session child inherits nothing of other sessions. It is the parent of every
session process: it alone kills and reaps them, so a pid is never signalled after reuse. The
isolation it gives them is chosen and set up once (tiers.py); this module is the fork server,
and (ZygoteLink) the server's end of its socket, so both ends of that protocol read together.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time

from aci_jax.sandbox import isolation, runner
from aci_jax.sandbox.config import SandboxConfig
from aci_jax.sandbox.files import remove_tree
from aci_jax.sandbox.server_process import pids_with_uid
from aci_jax.sandbox.tiers import Isolation

SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable places a uid can leave files

_WARMUP = """
import sympy
x, y = sympy.symbols('x y')
sympy.factor(x**2 - 1); sympy.expand((x + y)**3); sympy.simplify(sympy.sin(x)**2 + sympy.cos(x)**2)
sympy.solve([x + y - 2, x - y], [x, y]); sympy.Rational(1, 3) + 1; sympy.sqrt(8); sympy.isprime(97)
sympy.integrate(x**2, x); sympy.diff(sympy.exp(x), x); sympy.Matrix([[1, 2], [3, 4]]).det()
sympy.nsimplify(0.5); sympy.N(sympy.pi, 20); sympy.latex(x**2); str(x**2); repr(x**2)
import numpy
numpy.linalg.det(numpy.eye(2)); numpy.array([1.5]).sum(); repr(numpy.arange(3))
"""


class Zygote:
  def __init__(self, sock: socket.socket, cfg: SandboxConfig, sandbox_root: str):
    self.sock = sock
    self.cfg = cfg
    self.root = sandbox_root
    self.children: dict[int, tuple[int, str | None]] = {}  # pid -> (sid, workdir to remove)
    self.by_sid: dict[int, int] = {}
    self.uids: dict[int, int] = {}
    self.iso = Isolation(cfg, sandbox_root)
    self.cg_of: dict[int, tuple[str, int]] = {}  # pid -> (its memory cgroup, OOM kills before)
    self.cleanup_errors = 0
    self.last_cleanup_error = ""

  # --- set-up ---------------------------------------------------------------------------------
  def warm(self) -> None:
    for name in self.cfg.preload:
      importlib.import_module(name)
    if self.cfg.warmup and "sympy" in self.cfg.preload:
      exec(compile(_WARMUP, "<warmup>", "exec"), {})
    gc.collect()
    gc.freeze()  # children's collections never touch (and so never copy) the warm objects

  def choose_tier(self) -> dict:
    """Probes the strongest isolation that works here; returns the report for the host."""
    return self.iso.choose(self._probe, self._remove)

  def _probe(self) -> str | None:
    """Spawns one session with the current tier; None if it came up, else the error."""
    try:
      pid, fds, _ = self._fork(-1, self.cfg.uid_base)
    except OSError as e:
      return str(e)
    ctl_w, ctl_r, out_r, err_r = fds
    try:
      ready, _, _ = select.select([ctl_r], [], [], 10.0)
      data = os.read(ctl_r, 65536) if ready else b""
    finally:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      self._cleanup(pid)
      for fd in fds:
        os.close(fd)
    if b'"ready"' in data:
      return None
    return data[4:].decode("utf-8", "replace") or "probe child did not start"

  # --- sessions -------------------------------------------------------------------------------
  def _fork(self, sid: int, uid: int) -> tuple[int, list[int], str | None]:
    spec = dict(self.iso.spec_base, uid=uid, cgroup_fd=-1)
    workdir = None
    if self.iso.tier != "namespaces":
      # Unique per zygote: a directory a failed cleanup left behind never blocks a later
      # session (a restarted server counts sids and hands out uids from the start again).
      for k in range(1000):
        workdir = os.path.join(self.iso.work_root,
                               f"s{sid}_{uid}_{os.getpid()}" + (f"_{k}" if k else ""))
        try:
          os.mkdir(workdir, 0o700)
          break
        except FileExistsError:
          continue
      if spec["drop_uid"]:
        os.chown(workdir, uid, uid)
      spec["workdir"] = workdir
    pipes = [os.pipe() for _ in range(3)]  # requests, stdout, stderr
    (req_r, req_w), (out_r, out_w), (err_r, err_w) = pipes
    # Replies travel on a SEQPACKET socket: the kernel attaches the sending process's pid to
    # every message (SO_PASSCRED on the server's end), so the server accepts frames from the
    # session's own process only, never from a child the cell forked.
    rep_srv, rep_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rep_srv.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:  # room for the largest reply frame (a 64K-character error line) in one datagram
      rep_child.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE (root)
    except OSError:
      pass
    rep_r, rep_w = rep_srv.detach(), rep_child.detach()
    pipes.append((rep_r, rep_w))
    cg_name = None
    ns = self.iso.tier == "namespaces"
    pid = -1
    spec["landlock_fd"] = -1
    try:
      if self.iso.landlock is not None and workdir:
        spec["landlock_fd"] = self.iso.landlock.ruleset(workdir)
      if self.iso.cg is not None:
        cg_name = self.iso.cg.acquire()
        spec["cgroup_fd"] = self.iso.cg.procs_fd(cg_name)
        oom_before = self.iso.cg.oom_kills(cg_name)
      if ns:
        isolation.unshare(isolation.CLONE_NEWPID)  # our next child is pid 1 of a new namespace
      pid = os.fork()
    except OSError:
      for fd in (fd for p in pipes for fd in p):
        os.close(fd)
      for k in ("cgroup_fd", "landlock_fd"):
        if spec[k] >= 0:
          os.close(spec[k])
      if cg_name is not None:
        self.iso.cg.release(cg_name)
      if workdir:
        self._remove(workdir)
      raise
    finally:
      if ns and pid != 0:
        isolation.setns(self.iso.pidns_fd, isolation.CLONE_NEWPID)
    if pid == 0:
      runner.child_main(spec, req_r, rep_w, out_w, err_w)  # never returns
    for fd in (req_r, rep_w, out_w, err_w):
      os.close(fd)
    if spec["landlock_fd"] >= 0:
      os.close(spec["landlock_fd"])
    if cg_name is not None:
      os.close(spec["cgroup_fd"])
      self.cg_of[pid] = (cg_name, oom_before)
    self.children[pid] = (sid, workdir)
    self.uids[pid] = uid
    self.by_sid[sid] = pid
    return pid, [req_w, rep_r, out_r, err_r], workdir

  def _kill(self, pid: int) -> None:
    try:
      os.kill(pid, signal.SIGKILL)  # in a PID namespace this takes every descendant with it
    except ProcessLookupError:
      pass
    if self.iso.tier != "namespaces":
      self._killpg(pid, wait=False)

  @staticmethod
  def _killpg(pgid: int, wait: bool) -> bool:
    """setsid/setpgid are blocked by seccomp, so the group holds every descendant. With wait,
    repeat until the group is empty (a fork may race the signal), reaping the members that were
    orphaned to us (we are their subreaper) so they do not linger as zombies. Returns whether
    the group was seen empty (bounded: a slow machine may still be tearing members down)."""
    for _ in range(2000):
      try:
        os.killpg(pgid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        return True
      if not wait:
        return False
      try:
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
          pass
      except ChildProcessError:
        pass
      time.sleep(0.0002)
    return False

  @staticmethod
  def _kill_uid(uid: int) -> None:
    """Second net of the fallback tier, for a group that outlived _killpg's bound: SIGKILL
    every live process of the session's own uid (unique to the session until it is reaped
    here, so nothing else can be hit). A uid handed to the next session must own nothing."""
    for pid in pids_with_uid(uid, uid + 1):
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass

  def _sweep_shared_dirs(self, uid: int) -> None:
    """Seccomp tier only (no private mount namespace): remove what the session's uid left in
    the world-writable directories, once all its processes are dead."""
    for d in SHARED_DIRS:
      try:
        entries = list(os.scandir(d))
      except OSError:
        continue
      for e in entries:
        try:
          if e.stat(follow_symlinks=False).st_uid != uid:
            continue
          self._remove(e.path)
        except OSError:
          pass

  def _remove(self, path: str) -> None:
    """remove_tree, with failures counted and reported instead of raised: one session's
    cleanup must never take down the zygote, and with it every other session."""
    try:
      remove_tree(path)
    except Exception as e:  # noqa: BLE001 - contained per session by design
      self.cleanup_errors += 1
      self.last_cleanup_error = f"{path}: {type(e).__name__}: {e}"[:500]

  def _cleanup(self, pid: int) -> bool:
    """Everything of a dead session: its process group (fallback tier), files, cgroup.
    Returns whether the kernel OOM-killed one of its processes."""
    sid, workdir = self.children.pop(pid, (None, None))
    uid = self.uids.pop(pid, None)
    if sid is not None and self.by_sid.get(sid) == pid:
      del self.by_sid[sid]
    own_uid = uid is not None and self.iso.spec_base["drop_uid"]
    if self.iso.tier != "namespaces" and not self._killpg(pid, wait=True) and own_uid:
      self._kill_uid(uid)
    if workdir:
      self._remove(workdir)
    if own_uid and self.iso.tier != "namespaces":
      self._sweep_shared_dirs(uid)
    oom = False
    if pid in self.cg_of:
      name, before = self.cg_of.pop(pid)
      oom = self.iso.cg.oom_kills(name) > before
      self.iso.cg.release(name)
    return oom

  def _send(self, msg: dict, fds: list[int] = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
      socket.send_fds(self.sock, [data], list(fds))
    else:
      self.sock.send(data)

  def _reap(self) -> None:
    while True:
      try:
        pid, status = os.waitpid(-1, os.WNOHANG)
      except ChildProcessError:
        return
      if pid == 0:
        return
      if pid in self.children:
        sid = self.children[pid][0]
        oom = self._cleanup(pid)
        self._send({"op": "exit", "sid": sid, "status": status, "oom": oom,
                    "cleanup_errors": self.cleanup_errors})

  def serve(self) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
      while True:
        ready, _, _ = select.select([self.sock, wake_r], [], [], 1.0)
        if wake_r in ready:
          os.read(wake_r, 4096)
        self._reap()
        if self.sock not in ready:
          continue
        data = self.sock.recv(1 << 16)
        if not data:
          return
        msg = json.loads(data)
        if msg["op"] == "spawn":
          sid = msg["sid"]
          try:
            pid, fds, _ = self._fork(sid, msg["uid"])
          except OSError as e:
            self._send({"op": "spawn_error", "sid": sid, "detail": str(e)})
            continue
          cg = self.cg_of.get(pid)
          tasks = (self.iso.cg.path(cg[0]) + "/" + self.iso.cg.tasks_file) if cg else None
          self._send({"op": "spawned", "sid": sid, "pid": pid, "tasks": tasks}, fds)
          for fd in fds:
            os.close(fd)
        elif msg["op"] == "kill":
          pid = self.by_sid.get(msg["sid"])
          if pid is not None:
            self._kill(pid)
    finally:
      for pid in list(self.children):
        self._kill(pid)
      for pid in list(self.children):
        try:
          os.waitpid(pid, 0)
        except ChildProcessError:
          pass
        self._cleanup(pid)
      if self.iso.cg is not None:
        self.iso.cg.close()
      if self.iso.work_root != self.root:
        self._remove(self.iso.work_root)


def zygote_main(sock: socket.socket, cfg: SandboxConfig, sandbox_root: str) -> None:
  """Runs in the process the server forks first; never returns."""
  code = 0
  # Sessions get the default SIGPIPE action, as an ordinary process would; the server that
  # forked us ignores it (see server.main).
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)
  z = None
  try:
    isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us to be reaped
    z = Zygote(sock, cfg, sandbox_root)
    t0 = time.perf_counter()
    z.warm()
    report = z.choose_tier()
    report["warm_seconds"] = round(time.perf_counter() - t0, 3)
    z._send({"op": "hello", "report": report})
    z.serve()
  except BaseException as e:
    if z is not None and z.iso.cg is not None:
      z.iso.cg.close()  # no session lives on (they die with us): leave no cgroup behind
    if z is not None and z.iso.work_root != z.root:
      z._remove(z.iso.work_root)
    try:
      z_msg = {"op": "fatal", "detail": f"{type(e).__name__}: {e}"}
      sock.send(json.dumps(z_msg).encode())
    except OSError:
      pass
    code = 1
  finally:
    sys.stdout.flush()
    os._exit(code)


class ZygoteLink:
  """The server's end of the zygote: forks it (before the server has seen any cell) and speaks
  its protocol: "spawn" and "kill" out, by the server's id for a process; "spawned" (with the
  session's descriptors), "spawn_error", "exit" and "fatal" back."""

  def __init__(self):
    self.sock: socket.socket | None = None
    self.pid = 0

  def start(self, cfg: SandboxConfig, sandbox_root: str) -> dict:
    """Forks the zygote and returns its hello report."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
      a.close()
      os.closerange(3, b.fileno())
      os.closerange(b.fileno() + 1, 1 << 16)
      zygote_main(b, cfg, sandbox_root)
    b.close()
    self.sock, self.pid = a, pid
    data, _, _, _ = socket.recv_fds(self.sock, 1 << 16, 4)
    if not data:
      raise RuntimeError("zygote exited during start-up")
    msg = json.loads(data)
    if msg.get("op") != "hello":
      raise RuntimeError(msg.get("detail", "zygote failed to start"))
    return msg["report"]

  def send(self, op: str, zid: int, **fields) -> None:
    self.sock.send(json.dumps({"op": op, "sid": zid, **fields}).encode())

  def recv(self) -> tuple[dict, list[int]] | None:
    """A message and the descriptors passed with it; None when none is waiting."""
    try:
      data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 4)
    except BlockingIOError:
      return None
    if not data:
      raise RuntimeError("zygote died")
    return json.loads(data), fds

  def close(self) -> None:
    """Ends the zygote (which kills every session) and waits for it."""
    if self.sock is not None:
      self.sock.close()
    if self.pid:
      try:
        os.waitpid(self.pid, 0)
      except ChildProcessError:
        pass
