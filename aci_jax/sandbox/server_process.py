"""The sandbox server as a process of the host: starting it with a clean exec and reading its
hello, stopping and killing it, and the uids its sessions run as (a block claimed per pool, and
the /proc sweep that makes sure no process of that block survives)."""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from aci_jax.sandbox import protocol
from aci_jax.sandbox.config import SandboxConfig

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


class SandboxUnavailable(RuntimeError):
  """The server could not start with the requested isolation."""


def claim_uid_range(base: int, span: int) -> tuple[int, int]:
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


def start_server(config: SandboxConfig, root: str
                 ) -> tuple[subprocess.Popen, protocol.FrameReader, dict]:
  """(process, its frame reader, its isolation report) of a server that said hello, its pipes
  non-blocking; SandboxUnavailable when it did not."""
  proc = subprocess.Popen(
      [sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(config.to_json()), root,
       _PKG_PARENT],
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
      kill_server(proc)
      raise SandboxUnavailable("sandbox server did not start" +
                               ("" if ready else " (timed out)"))
    msgs = reader.feed(data)
  if msgs[0].get("op") != "hello":
    kill_server(proc)
    raise SandboxUnavailable(f"sandbox server failed: {msgs[0].get('detail')}")
  os.set_blocking(fd, False)
  os.set_blocking(proc.stdin.fileno(), False)
  return proc, reader, msgs[0]["report"]


def kill_server(proc: subprocess.Popen) -> None:
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


def stop_server(proc: subprocess.Popen, unsent: bytes, uid_range: tuple[int, int]) -> None:
  """Sends what is left to send and a shutdown, waits a little, then kills whatever remains."""
  try:
    os.set_blocking(proc.stdin.fileno(), True)
    protocol.write_all(proc.stdin.fileno(), unsent + protocol.encode({"op": "shutdown"}))
    proc.stdin.close()
  except (OSError, ValueError):
    pass
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    pass
  kill_server(proc)
  sweep_uids(uid_range)


def sweep_uids(uid_range: tuple[int, int]) -> None:
  """Last line of defence after a crash/shutdown: no process of our uid block survives."""
  if os.geteuid() != 0:
    return
  lo, hi = uid_range
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
