"""Helpers shared by the sandbox tests."""

from __future__ import annotations

import contextlib
import socket
import threading


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
