"""The session child: locks itself down, then executes cells sent by the server (stdlib only).

File descriptors after setup: 0 = /dev/null, 1/2 = stdout/stderr pipes read by the server,
3 = requests from the server, 4 = replies to the server (a unix SEQPACKET socket: the server
checks the kernel-attached sender pid of every frame, so a child the cell forks cannot forge
one), 5/6 = copies of 1/2 (restored before each cell). Nothing else is open.
"""

from __future__ import annotations

import ast
import errno
import io
import os
import resource
import signal
import sys
import traceback

from aci_jax.sandbox import isolation, protocol

CHILD_ENV_BASE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                  "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _place_fds(ctl_r: int, ctl_w: int, out_w: int, err_w: int) -> None:
  """Moves our four pipe ends to 1..4, /dev/null to 0, and closes every other descriptor."""
  import fcntl
  high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (out_w, err_w, ctl_r, ctl_w)]
  null = os.open("/dev/null", os.O_RDWR)
  os.dup2(null, 0)
  for target, fd in zip((1, 2, 3, 4), high):
    os.dup2(fd, target)
  os.closerange(5, 1 << 16)  # the zygote's socket, other sessions' pipes: nothing survives


_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python_paths() -> list[str]:
  """Directories the interpreter may import from (minimal set: no path under another). The
  checkout holding aci_jax itself is left out (and any directory above it): the sessions never
  import it (the runner is loaded before they fork), and it holds the run's data and workdirs.
  A virtual environment inside the checkout stays in."""
  cands = {os.path.realpath(p) for p in sys.path + [sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                     sys.base_exec_prefix]
           if p and os.path.isdir(p)}
  cands = {p for p in cands
           if not (p == _PKG_PARENT or _PKG_PARENT.startswith(p.rstrip("/") + "/"))}
  out = []
  for p in sorted(cands):
    if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
      out.append(p)
  return out


def _blocked_ancestor(path: str) -> str | None:
  """The first ancestor directory of path that other users cannot traverse, if any."""
  cur = "/"
  for comp in path.strip("/").split("/"):
    if not os.stat(cur).st_mode & 0o001:
      return cur
    cur = os.path.join(cur, comp)
  return None


# What a session sees in the namespaces tier, besides the interpreter's own directories: the
# system's programs and shared libraries (Python loads extension modules' dependencies from
# them, and cells may run /bin/sh), the loader's cache and the time zone, a few device nodes.
# Nothing else of the host: no /etc beyond these, no /home, /root, /work, /var, /opt, /srv,
# /mnt, no /sys, no host /proc or /tmp, no /dev/pts or /dev/ptmx.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr/bin", "/usr/sbin",
               "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec", "/usr/share")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "shm": "/tmp"}  # shm: the session's capped tmpfs


def exposed_paths() -> list[str]:
  """Host directories and files bound read-only into the sessions' root (namespaces tier):
  symlinks are recreated as they are, directories and files bound (minimal set, parents first,
  so nothing is ever created inside a bound host directory)."""
  cands = [p for p in SYSTEM_DIRS + SYSTEM_FILES + tuple(_python_paths())
           if p != "/" and os.path.lexists(p)]
  links = sorted({p for p in cands if os.path.islink(p)})
  out: list[str] = []
  for p in sorted({p for p in cands if not os.path.islink(p)}):
    if not any(p.startswith(q + "/") for q in out):
      out.append(p)
  return links + out


def build_root(new_root: str, paths: list[str]) -> None:
  """Mounts a small tmpfs at new_root holding only `paths` (bind mounts of the host's, or the
  same symlinks), /dev with a few device nodes, and empty /proc and /tmp for each session to
  mount its own on. Must run as root inside a private mount namespace."""
  isolation.mount("tmpfs", new_root, "tmpfs", isolation.MS_NOSUID | isolation.MS_NODEV,
                  "size=1m,nr_inodes=4096,mode=755")
  def inside(p):
    return os.path.join(new_root, p.lstrip("/"))
  for p in paths:
    target = inside(p)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(p):
      os.symlink(os.readlink(p), target)
      continue
    if os.path.isdir(p):
      os.makedirs(target, exist_ok=True)
    else:
      open(target, "w").close()
    isolation.mount(p, target, None, isolation.MS_BIND | isolation.MS_REC)
  dev = inside("/dev")
  os.makedirs(dev, exist_ok=True)
  for name in DEVICES:
    if os.path.exists(f"/dev/{name}"):
      open(os.path.join(dev, name), "w").close()
      isolation.mount(f"/dev/{name}", os.path.join(dev, name), None, isolation.MS_BIND)
  for name, target in DEV_LINKS.items():
    os.symlink(target, os.path.join(dev, name))
  for d in ("/proc", "/tmp"):
    os.makedirs(inside(d), exist_ok=True)
  os.chmod(inside("/tmp"), 0o1777)
  # Interpreter directories under /tmp (a checkout with its .venv cloned there) would vanish
  # under each session's own tmpfs on /tmp: hold a second bind of each, which the session
  # binds back on top of its tmpfs (setup).
  for i, p in enumerate(_under_tmp(paths)):
    held = inside(f"{HELD}/{i}")
    os.makedirs(held, exist_ok=True)
    isolation.mount(p, held, None, isolation.MS_BIND | isolation.MS_REC)


HELD = "/.held"  # in the sessions' root: second binds of interpreter directories under /tmp


def _under_tmp(paths: list[str]) -> list[str]:
  """The bound (non-symlink) directories of `paths` that lie under /tmp, in order."""
  return [p for p in paths if p.startswith("/tmp/") and not os.path.islink(p)
          and os.path.isdir(p)]


def setup(spec: dict) -> None:
  """Applies every isolation layer named in spec (built by Zygote._spec). Raises on failure."""
  tier = spec["tier"]
  uid = spec["uid"]
  workdir = spec["workdir"]
  if tier == "namespaces":
    # Already pid 1 of a fresh PID namespace, inside the zygote's empty network namespace and
    # its prepared read-only mount tree (see Zygote._prepare_namespaces). Our own copy of that
    # tree gets a /proc of our PID namespace (the host's processes and their environ are
    # invisible) and a private size-capped tmpfs on /tmp as working directory, which vanishes
    # with the mount namespace, i.e. when the last process of the session dies.
    isolation.unshare(isolation.CLONE_NEWNS | isolation.CLONE_NEWIPC | isolation.CLONE_NEWUTS)
    isolation.mount("proc", "/proc", "proc",
                    isolation.MS_NOSUID | isolation.MS_NODEV | isolation.MS_NOEXEC)
    held = _under_tmp(spec.get("exposed", []))  # before the tmpfs hides them
    isolation.mount("tmpfs", workdir, "tmpfs", isolation.MS_NOSUID | isolation.MS_NODEV,
                    f"size={spec['fsize']},nr_inodes=8192,mode=700,uid={uid},gid={uid}")
    for i, p in enumerate(held):
      os.makedirs(p, exist_ok=True)  # root-owned parents on the session's tmpfs
      isolation.mount(f"{HELD}/{i}", p, None, isolation.MS_BIND | isolation.MS_REC)
      isolation.mount(None, p, None,
                      isolation.MS_REMOUNT | isolation.MS_BIND | isolation.MS_RDONLY)
  # Own process group, so one killpg reaches every descendant (setsid() would do too, but it
  # creates a scheduler autogroup: 3-8 ms per session on this kernel; no tty is involved).
  os.setpgid(0, 0)
  os.chdir(workdir)
  isolation.set_rlimits(address_space=spec["memory"], cpu_soft=spec["cpu_soft"],
                        cpu_hard=spec["cpu_hard"], nproc=spec["nproc"], fsize=spec["fsize"],
                        nofile=spec["nofile"], stack=spec["stack"])
  if spec["drop_uid"]:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
  # After the uid change (which clears it): die with the zygote, whatever happens to the server.
  isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
  isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1)
  if spec["seccomp"]:
    program = spec.get("filter")  # prebuilt by the zygote unless it depends on our pid
    if program is None:
      program = isolation.build_filter(
          block_sockets=spec["block_sockets"], block_setsid=spec["block_setsid"],
          block_signals_except=os.getpid() if spec["block_signals"] else None)
    isolation.install_filter(program)
  os.environ.clear()
  os.environ.update(CHILD_ENV_BASE, HOME=workdir, TMPDIR=workdir)
  sys.argv = [""]


def exc_line(e: BaseException) -> str:
  """The last line of the traceback, as the harness shows it (notes dropped)."""
  try:
    lines = "".join(traceback.format_exception_only(type(e), e)).rstrip("\n").split("\n")
    notes = getattr(e, "__notes__", None)
    if isinstance(notes, list) and notes:
      n = sum(str(x).count("\n") + 1 for x in notes)
      lines = lines[:-n] or lines
    return lines[-1][:65536]
  except BaseException:  # a hostile __str__ must not take the runner down
    return type(e).__name__


def _stdio() -> None:
  """Fresh stdout/stderr on fds 1/2 every cell: the previous cell may have closed or replaced
  them."""
  os.dup2(5, 1)
  os.dup2(6, 2)
  sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                errors="backslashreplace")
  sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                errors="backslashreplace", line_buffering=True)


def _flush() -> None:
  for s in (sys.stdout, sys.stderr):
    try:
      s.flush()
    except BaseException:
      pass


def _lingering() -> bool:
  """True if threads or child processes outlive the cell."""
  try:
    while True:
      pid, _ = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        return True  # a live child
  except ChildProcessError:
    pass
  except OSError:
    return True
  try:
    return len(os.listdir("/proc/self/task")) > 1
  except OSError:
    return True


def run_cell(msg: dict, g: dict, cpu_s: float, cpu_hard: int, display_last_expr: bool) -> dict:
  _stdio()
  ru = resource.getrusage(resource.RUSAGE_SELF)
  soft = min(cpu_hard, int(ru.ru_utime + ru.ru_stime + cpu_s) + 1)
  try:
    resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
  except (ValueError, OSError):
    pass
  status, detail = "ok", ""
  try:
    for piece in msg.get("prelude") or ():
      # Replayed cells run silently: their output was shown to the model already.
      os.dup2(0, 1)
      try:
        exec(compile(piece, "<replay>", "exec"), g)
      finally:
        _flush()
        os.dup2(5, 1)
    tree = ast.parse(msg["code"], "<cell>", "exec")
    last = None
    if display_last_expr and tree.body and isinstance(tree.body[-1], ast.Expr):
      last = tree.body.pop()
    exec(compile(tree, "<cell>", "exec"), g)
    if last is not None:
      value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), g)
      if value is not None:
        sys.stdout.write(repr(value) + "\n")
  except SystemExit as e:
    if e.code not in (None, 0):
      status, detail = "error", exc_line(e)
  except MemoryError as e:
    status, detail = "memory", exc_line(e)
  except BaseException as e:
    status, detail = "error", exc_line(e)
  _flush()
  # Timers the cell armed would run its signal handlers between cells, burning CPU while the
  # session looks idle (POSIX timers are refused by seccomp; these are the setitimer ones).
  for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
    try:
      signal.setitimer(which, 0)
    except BaseException:
      pass
  return {"op": "result", "status": status, "detail": detail, "lingering": _lingering()}


def _reply(reply: dict) -> None:
  """One frame = one datagram on the reply socket. A frame larger than the socket buffer
  (an error line of ~64K characters) is retried with the error line cut to head and tail."""
  try:
    protocol.write_all(4, protocol.encode(reply))
  except OSError as e:
    if e.errno != errno.EMSGSIZE:
      raise
    d = reply.get("detail", "")
    reply = dict(reply, detail=d[:8192] + "..." + d[-8192:])
    protocol.write_all(4, protocol.encode(reply))


def serve(spec: dict) -> None:
  """Request loop; exits when the server closes the request pipe."""
  me = os.getpid()
  os.dup(1), os.dup(2)  # fds 5 and 6: pristine copies of the output pipes
  g = {"__name__": "__main__", "__builtins__": __builtins__}
  protocol.write_all(4, protocol.encode({"op": "ready", "pid": os.getpid()}))
  while True:
    try:
      msg = protocol.read_frame_blocking(3, 1 << 30)
    except (OSError, ValueError):
      msg = None
    if msg is None:
      os._exit(0)
    if msg.get("op") != "cell":
      continue
    reply = run_cell(msg, g, spec["cpu_s"], spec["cpu_hard"], spec["display_last_expr"])
    if os.getpid() != me:
      os._exit(0)  # a child the cell forked fell through to here: it ends like a script would
    try:
      _reply(reply)
    except OSError:
      os._exit(0)


def child_main(spec: dict, ctl_r: int, ctl_w: int, out_w: int, err_w: int) -> None:
  """Entry point in the forked child; never returns."""
  try:
    # The zygote's signal state must not leak in: its wakeup fd number may now be our reply
    # pipe (a SIGCHLD would write a byte into the protocol), and its handlers are its own.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if spec.get("cgroup_fd", -1) >= 0:
      # Into the session's memory cgroup while still root, before anything is allocated: from
      # here on every page of this process and of its children is charged there.
      os.write(spec["cgroup_fd"], b"0")
      os.close(spec["cgroup_fd"])
    if spec.get("landlock_fd", -1) >= 0:
      # The seccomp tier's filesystem view (the namespaces tier has its own root instead): the
      # ruleset the zygote made for us, plus our own /proc entry (the runner counts its threads
      # there; no other process's entry, so no host command line, is readable).
      isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1)
      me = os.open(f"/proc/{os.getpid()}", os.O_PATH | os.O_DIRECTORY)
      isolation.landlock_allow(spec["landlock_fd"], me,
                               isolation.LL_READ_FILE | isolation.LL_READ_DIR)
      os.close(me)
      isolation.landlock_restrict(spec["landlock_fd"])
      os.close(spec["landlock_fd"])
    _place_fds(ctl_r, ctl_w, out_w, err_w)
    setup(spec)
  except BaseException as e:
    try:
      protocol.write_all(4, protocol.encode({"op": "setup_error", "detail": exc_line(e)}))
    finally:
      os._exit(70)
  try:
    serve(spec)
  finally:
    os._exit(0)
