"""A session process as the server sees it: the cell it runs, its descriptors (passed by the
zygote), what it wrote (replies carry their writer's pid from the kernel, so the server accepts
them from the session's own process only), and how busy it is between cells."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct

from aci_jax.sandbox import display, protocol

READ_CHUNK = 1 << 16
MAX_REPLY = 1 << 20  # a child's reply frame larger than this is a protocol violation
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Cell:
  """One cell at the server: what the host sent, its deadline and its captured output."""

  __slots__ = ("cid", "sid", "code", "prelude", "oneshot", "new", "t0", "deadline", "out",
               "err", "grace", "started")

  def __init__(self, msg: dict, keep: int):
    self.cid = msg["cid"]
    self.sid = msg["sid"]
    self.code = msg["code"]
    self.prelude = msg.get("prelude") or []
    self.oneshot = bool(msg.get("oneshot"))
    self.new = bool(msg.get("new"))  # the first cell of a new session id
    self.t0 = 0.0
    self.deadline = 0.0
    # False while the cell waits for its session's process to come up (fork, isolation set-up):
    # t0 and deadline then bound the start (start_timeout_s); at "ready" they restart from zero
    # with timeout_s, so the cell's clock holds its own execution only.
    self.started = False
    self.grace = 0.0  # when set: time at which we stop waiting for the exit status
    self.out = display.Capture(keep)
    self.err = display.Capture(2048)


class Session:
  """One session process: its request pipe, reply socket, stdout and stderr, and its cell."""

  __slots__ = ("sid", "zid", "uid", "pid", "req", "rep", "out", "err", "reader", "wbuf", "cell",
               "dying", "exit_status", "idle_bytes", "rep_sock", "ready", "oom", "tasks",
               "cpu_mark", "ran")

  def __init__(self, zid: int, uid: int):
    self.sid: int | None = None  # the host's session id; None while it is a spare
    self.zid, self.uid, self.pid = zid, uid, 0
    self.req = self.rep = self.out = self.err = -1
    self.reader = protocol.FrameReader(MAX_REPLY)
    self.wbuf = bytearray()
    self.cell: Cell | None = None
    self.dying = False
    self.exit_status: int | None = None
    self.idle_bytes = 0
    self.rep_sock: socket.socket | None = None
    self.ready = False         # sent "ready": from now on a setup_error frame is forged
    self.oom = False           # the kernel OOM-killed a process of its memory cgroup
    self.tasks: str | None = None  # its memory cgroup's list of threads (None: no cgroup)
    self.cpu_mark: float | None = None  # CPU seconds at the last idle check
    self.ran = False           # has run a cell (spares that never did cannot burn CPU)

  def attach(self, sel: selectors.BaseSelector, pid: int, fds: list[int],
             tasks: str | None) -> None:
    """Takes the descriptors the zygote passed for the forked process, and watches them."""
    self.pid = pid
    self.tasks = tasks
    self.req, self.rep, self.out, self.err = fds
    self.rep_sock = socket.socket(fileno=self.rep)
    for fd in fds:
      os.set_blocking(fd, False)
    sel.register(self.rep, selectors.EVENT_READ, ("rep", self))
    sel.register(self.out, selectors.EVENT_READ, ("out", self))
    sel.register(self.err, selectors.EVENT_READ, ("err", self))

  def close_fds(self, sel: selectors.BaseSelector) -> None:
    for name in ("req", "rep", "out", "err"):
      if getattr(self, name) >= 0:
        self.close_one(sel, name)

  def close_one(self, sel: selectors.BaseSelector, name: str) -> None:
    fd = getattr(self, name)
    try:
      sel.unregister(fd)
    except KeyError:
      pass
    if name == "rep":
      self.rep_sock.close()
      self.rep_sock = None
    else:
      os.close(fd)
    setattr(self, name, -1)

  def recv(self, name: str) -> tuple[bytes | None, int] | None:
    """One read from `name` ("rep", "out" or "err"): (data, pid of the writer), with b"" at the
    end of the stream; None when nothing more is available now. A reply datagram carries its
    sender's pid from the kernel (0 when absent or truncated); None data is an empty one."""
    sender = self.pid
    try:
      if name == "rep":
        data, anc, flags, _ = self.rep_sock.recvmsg(MAX_REPLY + 8,
                                                    socket.CMSG_SPACE(_UCRED.size))
        sender = 0
        for level, kind, body in anc:
          if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            sender = _UCRED.unpack(body[:_UCRED.size])[0]
        if not data and anc:
          data = None  # an empty datagram is a message, not the end of the stream
        if flags & socket.MSG_TRUNC:
          sender = 0
      else:
        data = os.read(getattr(self, name), READ_CHUNK)
    except BlockingIOError:
      return None
    except OSError:
      data = b""
    return data, sender

  def usage(self) -> tuple[float, bool] | None:
    """(CPU seconds used, whether anything but the runner's one thread runs: another thread, or
    another process in its memory cgroup); None when /proc no longer has it (exiting)."""
    try:
      with open(f"/proc/{self.pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
      cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
      busy = int(fields[17]) > 1  # threads of the runner
      if self.tasks is not None and not busy:
        with open(self.tasks, "rb") as f:
          busy = f.read().count(b"\n") > 1  # any other process in its cgroup
    except (OSError, IndexError, ValueError):
      return None
    return cpu, busy


def describe_exit(status: int | None, oom: bool = False) -> tuple[str, str]:
  """(status category, detail) for a process that died without reporting."""
  if status is None:
    return "killed", "Killed: the process stopped responding"
  code = os.waitstatus_to_exitcode(status)
  if code == -signal.SIGKILL and oom:
    return "memory", "MemoryError: the session went over its memory limit"
  if code < 0:
    sig = -code
    if sig == signal.SIGXCPU:
      return "timeout", ""
    try:
      name = signal.Signals(sig).name
    except ValueError:
      name = str(sig)
    return "killed", f"Killed: process terminated by signal {sig} ({name})"
  return "killed", f"Killed: process exited with status {code}"
