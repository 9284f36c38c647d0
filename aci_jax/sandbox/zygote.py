"""The zygote: a warm, single-threaded image (sympy, numpy, math imported) that forks sessions.

It is forked by the server before the server has seen any cell, and it never receives cell code
or output, so a session child inherits nothing of other sessions. It is the parent of every
session process: it alone kills and reaps them, so a pid is never signalled after reuse.
"""

from __future__ import annotations

import errno
import gc
import importlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time

from aci_jax.sandbox import cgroups, isolation, runner
from aci_jax.sandbox.config import SandboxConfig

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


_HOIST_DEPTH = 64  # remove_tree holds at most this many directory levels open


def remove_tree(path: str) -> None:
  """Removes a file, symlink or directory tree, whatever its shape: no recursion (a 100,000-deep
  tree cannot exhaust the Python stack), no path longer than one name (relative to descriptors
  we hold, opened with O_NOFOLLOW, so a symlink swapped in is removed, never followed), and at
  most _HOIST_DEPTH open levels: deeper directories are moved up to the top and removed from
  there. Raises OSError for what it could not remove."""
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return
  if not stat.S_ISDIR(st.st_mode):
    os.unlink(path)
    return
  parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
  try:
    _remove_dir_at(parent, os.path.basename(os.path.abspath(path)))
  finally:
    os.close(parent)


def _open_dir(dir_fd: int, name: str) -> int:
  return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def _remove_dir_at(parent_fd: int, name: str) -> None:
  top = _open_dir(parent_fd, name)
  stack = [(top, name, os.scandir(top))]  # (fd, name in the level above, its listing)
  hoisted = 0
  try:
    while stack:
      fd, _, it = stack[-1]
      descended = False
      for e in it:
        try:
          is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
          is_dir = False
        if not is_dir:
          try:
            os.unlink(e.name, dir_fd=fd)
          except FileNotFoundError:
            pass
          except IsADirectoryError:  # replaced by a directory since it was listed
            is_dir = True
          if not is_dir:
            continue
        if len(stack) >= _HOIST_DEPTH:
          hoisted += 1
          os.rename(e.name, f".aci_hoisted_{hoisted}", src_dir_fd=fd, dst_dir_fd=top)
          continue
        try:
          sub = _open_dir(fd, e.name)
        except FileNotFoundError:
          continue
        except OSError:  # not a directory any more (a symlink swapped in)
          os.unlink(e.name, dir_fd=fd)
          continue
        stack.append((sub, e.name, os.scandir(sub)))
        descended = True
        break
      if descended:
        continue
      fd, nm, it = stack.pop()
      it.close()
      up = stack[-1][0] if stack else parent_fd
      try:
        os.rmdir(nm, dir_fd=up)
        os.close(fd)
      except OSError as e:
        if e.errno != errno.ENOTEMPTY:
          os.close(fd)
          raise
        stack.append((fd, nm, os.scandir(fd)))  # entries added while we listed (hoisted ones)
  finally:
    for fd, _, it in stack:
      it.close()
      os.close(fd)


def _vm_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  return 0


class Zygote:
  def __init__(self, sock: socket.socket, cfg: SandboxConfig, sandbox_root: str):
    self.sock = sock
    self.cfg = cfg
    self.root = sandbox_root
    self.children: dict[int, tuple[int, str | None]] = {}  # pid -> (sid, workdir to remove)
    self.by_sid: dict[int, int] = {}
    self.uids: dict[int, int] = {}
    self.tier = ""
    self.spec_base: dict = {}
    self.pidns_fd = -1
    self.cg: cgroups.MemoryCgroups | None = None
    self.cg_reasons: list[str] = []
    self.cg_of: dict[int, tuple[str, int]] = {}  # pid -> (its memory cgroup, OOM kills before)
    self.cleanup_errors = 0
    self.last_cleanup_error = ""
    self.landlock: isolation.LandlockView | None = None  # the seccomp tier's filesystem view
    self.work_root = sandbox_root  # where the seccomp tier's session directories live

  # --- set-up ---------------------------------------------------------------------------------
  def warm(self) -> None:
    for name in self.cfg.preload:
      importlib.import_module(name)
    if self.cfg.warmup and "sympy" in self.cfg.preload:
      exec(compile(_WARMUP, "<warmup>", "exec"), {})
    gc.collect()
    gc.freeze()  # children's collections never touch (and so never copy) the warm objects

  def _spec(self, tier: str) -> dict:
    cfg = self.cfg
    root = os.geteuid() == 0
    exposed = runner.exposed_paths() if tier == "namespaces" else []
    seccomp = isolation.seccomp_supported()
    # socket() is refused in both tiers: in the namespaces tier sessions share one empty network
    # namespace, where abstract unix sockets would otherwise connect concurrent sessions.
    blocks = dict(block_sockets=True, block_setsid=tier != "namespaces",
                  block_memfd=self.cg is None, block_sysv_ipc=tier != "namespaces")
    prebuilt = None
    if seccomp and root:
      prebuilt = isolation.build_filter(**blocks, block_signals_except=None)
    return dict(
        exposed=exposed, filter=prebuilt, **blocks,
        tier=tier, drop_uid=root, uid=0, workdir="/tmp",
        memory=int(cfg.memory_mb) << 20, cpu_s=float(cfg.cpu_s),
        cpu_soft=int(cfg.cpu_s) + 1, cpu_hard=int(cfg.session_cpu_s) + 1,
        nproc=cfg.nproc, fsize=int(cfg.file_mb) << 20, nofile=cfg.nofile,
        display_last_expr=cfg.display_last_expr, seccomp=seccomp, block_signals=not root)

  def choose_tier(self) -> dict:
    """Probes the strongest isolation that works here; returns the report for the host."""
    root = os.geteuid() == 0
    errors = {}
    vm_bytes, threads = _vm_bytes(), len(os.listdir("/proc/self/task"))  # before any pivot_root
    if root:
      self.cg, self.cg_reasons = cgroups.detect(int(self.cfg.memory_mb) << 20)
    else:
      self.cg_reasons = ["not root"]
    tiers = ["namespaces", "seccomp"] if self.cfg.isolation == "auto" else [self.cfg.isolation]
    for tier in tiers:
      if tier == "seccomp" and not isolation.seccomp_supported():
        errors[tier] = f"no seccomp syscall table for {os.uname().machine}"
        continue
      if tier == "seccomp":
        self._prepare_fallback()
      self.tier, self.spec_base = tier, self._spec(tier)
      if tier == "namespaces":
        try:
          self._prepare_namespaces()
        except OSError as e:
          errors[tier] = str(e)
          self.tier = ""
          continue
      err = self._probe()
      if err is None:
        break
      errors[tier] = err
      if tier == "namespaces":
        self._leave_namespaces()
      self.tier = ""
    if not self.tier:
      raise RuntimeError("no isolation tier works here: " + json.dumps(errors))
    if not root and not self.cfg.allow_weak:
      raise RuntimeError("the sandbox needs root (per-session uids); running as uid "
                         f"{os.geteuid()} shares the host's uid, pass allow_weak=True to accept")
    need = vm_bytes + (64 << 20)
    if self.spec_base["memory"] < need:
      raise RuntimeError(f"memory_mb={self.cfg.memory_mb} is below the warm image's address "
                         f"space ({need >> 20} MiB needed)")
    ns = self.tier == "namespaces"
    return {
        "exposed": self.spec_base["exposed"],
        "tier": self.tier,
        "network": "netns+seccomp" if ns else "seccomp",
        "processes": "pid-namespace" if ns else "process-group (setsid blocked)",
        "filesystem": ("minimal read-only root (interpreter, its libraries, system programs and "
                       "libraries, /etc/ld.so.cache, /etc/localtime, /dev/{null,zero,full,"
                       "random,urandom}), private /proc and size-capped tmpfs /tmp" if ns
                       else f"landlock (ABI {self.landlock.abi}): reads only the interpreter, its "
                       "libraries, system programs and libraries, /etc/ld.so.cache, "
                       "/etc/localtime, 5 device nodes and its own /proc entry; writes only its "
                       "own directory" if self.landlock
                       else "host filesystem by uid permissions, per-session directory"),
        "devices": ("null, zero, full, random, urandom (no ptmx, no pts)" if ns or self.landlock
                    else "host /dev by permissions"),
        "disk": (f"private tmpfs of file_mb={self.cfg.file_mb} MiB" if ns else
                 "own directory on tmpfs, counted by the memory cgroup"
                 if self.work_root != self.root else
                 f"RLIMIT_FSIZE={self.cfg.file_mb} MiB per file only (no total limit)"),
        "user": "per-session uid" if root else "shared uid (weak)",
        "seccomp": "deny-list" if self.spec_base["seccomp"] else "unavailable",
        "memory": (f"{self.cg.kind} memory cgroup per session ({self.cfg.memory_mb} MiB for all "
                   "its processes, memfds and tmpfs files)" if self.cg else
                   f"RLIMIT_AS per process only ({self.cfg.memory_mb} MiB each, up to nproc="
                   f"{self.cfg.nproc} processes); memfd_create refused"),
        "memory_cgroup": self.cg.parent if self.cg else None,
        "workdirs": None if ns else self.work_root,
        "cgroup_probe": self.cg_reasons,
        "probe_errors": errors,
        "warnings": self._warnings(),
        "zygote_pid": os.getpid(),
        "threads": threads,
    }

  def _prepare_fallback(self) -> None:
    """The seccomp tier's filesystem view, where the kernel has Landlock: sessions read only
    what Python needs and write only their own directory. With a memory cgroup as well, that
    directory lives on a tmpfs (/dev/shm), so its files count against the session's memory
    limit: a total disk limit. Without Landlock the host's files are left to uid permissions
    (reported)."""
    abi = isolation.landlock_abi()
    if not abi:
      return
    self.landlock = isolation.LandlockView(abi, runner.exposed_paths())
    if self.cg is not None and cgroups._is_fs("/dev/shm", "tmpfs"):
      self._sweep_stale_work_roots()
      d = f"/dev/shm/aci_sandbox_{os.getpid()}_{os.urandom(4).hex()}"
      try:
        os.mkdir(d, 0o711)
        os.chmod(d, 0o711)
        self.work_root = d
      except OSError:
        pass

  def _sweep_stale_work_roots(self) -> None:
    """Directories of zygotes that were killed (a crashed server takes its zygote with it)."""
    for name in os.listdir("/dev/shm"):
      parts = name.split("_")
      if not name.startswith("aci_sandbox_") or len(parts) != 4 or not parts[2].isdigit():
        continue
      try:
        os.kill(int(parts[2]), 0)
        continue  # its zygote is alive
      except ProcessLookupError:
        self._remove(os.path.join("/dev/shm", name))
      except OSError:
        continue

  def _prepare_namespaces(self) -> None:
    """Once, in the zygote itself: an empty network namespace, and a new root filesystem that
    holds only what running Python needs (runner.build_root), read-only everywhere; the
    zygote moves into it with pivot_root and detaches the host's tree, so no session can reach
    anything else of the host. Every session starts from this; doing it here keeps the
    per-session cost to its own /proc and /tmp."""
    self._host_ns = {t: os.open(f"/proc/self/ns/{n}", os.O_RDONLY)
                     for t, n in ((isolation.CLONE_NEWNS, "mnt"), (isolation.CLONE_NEWNET, "net"))}
    self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
      isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWNET)
      isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
      # Mounted on the pool's own directory, in our private mount namespace only: the host
      # sees that directory as it was (empty), and nothing is left to remove afterwards.
      runner.build_root(self.root, self.spec_base["exposed"])
      os.chdir(self.root)
      isolation.pivot_root(".", ".")  # the old root is now stacked under the new one ...
      isolation.umount2(".", isolation.MNT_DETACH)  # ... and detached: gone from our tree
      os.chdir("/")
      isolation.make_tree_readonly("/")
    except OSError:
      self._leave_namespaces()
      raise

  def _leave_namespaces(self) -> None:
    for t, fd in getattr(self, "_host_ns", {}).items():
      try:
        isolation.setns(fd, t)
      except OSError:
        pass

  def _warnings(self) -> list[str]:
    w = []
    if self.cg is None:
      w.append("no memory cgroup (" + "; ".join(self.cg_reasons) + "): the memory limit is "
               "per process, so forked children multiply it")
    if os.geteuid() != 0:
      w.append("not root: sessions share the host uid (signals and /proc of the host's processes "
               "are filtered by seccomp only)")
    if self.tier != "namespaces" and self.landlock is None:
      w.append("no mount namespace and no Landlock: sessions can read every world-readable host "
               "file and the host's /proc, and write to world-writable directories while they "
               "run (what their uid left there is deleted when the session ends)")
    if self.tier != "namespaces":
      if self.work_root == self.root:
        w.append("no total disk limit: a session may write many files of up to file_mb each")
      if self.spec_base["drop_uid"] and any(runner._blocked_ancestor(p)
                                            for p in runner._python_paths()):
        w.append("the interpreter's directories are not readable by other users: sessions can "
                 "only import modules preloaded in the warm image")
    return w

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
    spec = dict(self.spec_base, uid=uid, cgroup_fd=-1)
    workdir = None
    if self.tier != "namespaces":
      # Unique per zygote: a directory a failed cleanup left behind never blocks a later
      # session (a restarted server counts sids and hands out uids from the start again).
      for k in range(1000):
        workdir = os.path.join(self.work_root,
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
    ns = self.tier == "namespaces"
    pid = -1
    spec["landlock_fd"] = -1
    try:
      if self.landlock is not None and workdir:
        spec["landlock_fd"] = self.landlock.ruleset(workdir)
      if self.cg is not None:
        cg_name = self.cg.acquire()
        spec["cgroup_fd"] = self.cg.procs_fd(cg_name)
        oom_before = self.cg.oom_kills(cg_name)
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
        self.cg.release(cg_name)
      if workdir:
        self._remove(workdir)
      raise
    finally:
      if ns and pid != 0:
        isolation.setns(self.pidns_fd, isolation.CLONE_NEWPID)
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
    if self.tier != "namespaces":
      self._killpg(pid, wait=False)

  @staticmethod
  def _killpg(pgid: int, wait: bool) -> None:
    """setsid/setpgid are blocked by seccomp, so the group holds every descendant. With wait,
    repeat until the group is empty (a fork may race the signal), reaping the members that were
    orphaned to us (we are their subreaper) so they do not linger as zombies."""
    for _ in range(2000):
      try:
        os.killpg(pgid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        return
      if not wait:
        return
      try:
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
          pass
      except ChildProcessError:
        pass
      time.sleep(0.0002)

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
    if self.tier != "namespaces":
      self._killpg(pid, wait=True)
    if workdir:
      self._remove(workdir)
    if uid is not None and self.tier != "namespaces" and self.spec_base["drop_uid"]:
      self._sweep_shared_dirs(uid)
    oom = False
    if pid in self.cg_of:
      name, before = self.cg_of.pop(pid)
      oom = self.cg.oom_kills(name) > before
      self.cg.release(name)
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
          self._send({"op": "spawned", "sid": sid, "pid": pid,
                      "tasks": (self.cg.path(cg[0]) + "/" + self.cg.tasks_file) if cg else None},
                     fds)
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
      if self.cg is not None:
        self.cg.close()
      if self.work_root != self.root:
        self._remove(self.work_root)


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
    if z is not None and z.cg is not None:
      z.cg.close()  # no session lives on (they die with us): leave no cgroup behind
    if z is not None and z.work_root != z.root:
      z._remove(z.work_root)
    try:
      z_msg = {"op": "fatal", "detail": f"{type(e).__name__}: {e}"}
      sock.send(json.dumps(z_msg).encode())
    except OSError:
      pass
    code = 1
  finally:
    sys.stdout.flush()
    os._exit(code)
