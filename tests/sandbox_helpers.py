"""Helpers shared by the sandbox tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def host_listener():
  """A TCP server on the host's loopback for a cell to try to reach, accepting for 0.5 s:
  yields (port, accepted), accepted holding whatever connection arrived."""
  srv = socket.socket()
  srv.bind(("127.0.0.1", 0))
  srv.listen(8)
  srv.settimeout(0.5)
  accepted = []

  def accept():
    try:
      accepted.append(srv.accept())
    except OSError:
      pass
  t = threading.Thread(target=accept)
  t.start()
  try:
    yield srv.getsockname()[1], accepted
  finally:
    t.join()
    srv.close()


# How long a closed session's processes may take to disappear from /proc. The kernel tears down a
# killed fork bomb's 64 processes in ~0.1 s on an idle machine; a fresh CI VM under load took
# over 3 s for such teardown once. A process that escaped the kill lives forever, so a generous
# window still catches every leak; it only stops the VM's speed from failing the test.
REAP_WINDOW_S = 20.0


def describe_procs(pids: list[int]) -> list[str]:
  """One line per pid: its state, parent, pid namespace chain and command (for a failure)."""
  out = []
  for pid in pids:
    try:
      with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ")[:80].decode("utf-8", "replace")
      out.append(f"{pid} state={fields.get('State')} ppid={fields.get('PPid')} "
                 f"nspid={fields.get('NSpid')} uid={fields.get('Uid', '').split()[:1]} {cmd}")
    except OSError:
      out.append(f"{pid} gone")
  return out


def wait_until_gone(list_pids, window_s: float = REAP_WINDOW_S) -> list[str]:
  """Polls list_pids() until it is empty or window_s passed; returns what is left, described."""
  deadline = time.monotonic() + window_s
  while list_pids() and time.monotonic() < deadline:
    time.sleep(0.02)
  return describe_procs(list_pids())
