"""The fallback tier (no namespaces: per-session uid + seccomp), forced on this machine so the
code path that hosts without CAP_SYS_ADMIN get is exercised too."""

from __future__ import annotations

import os
import time

import pytest

from aci_jax.sandbox import Sandbox, SandboxConfig, Status
from aci_jax.sandbox.pool import pids_with_uid
from sandbox_helpers import host_listener, wait_until_gone


def procs_with_uid(lo: int, hi: int) -> list[int]:
  return pids_with_uid(lo, hi, zombies=True)  # a zombie left behind counts as a leak

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def sb():
  # Only preloaded modules import when the interpreter lives in a directory other users cannot
  # read (e.g. a pyenv under /root): preload what these programs use.
  cfg = SandboxConfig(isolation="seccomp", timeout_s=TIMEOUT, memory_mb=512, spares=0,
                      preload=SandboxConfig().preload + ("socket", "encodings.idna", "subprocess", "signal"))
  box = Sandbox(cfg)
  yield box
  box.shutdown()
  assert procs_with_uid(*box.uid_range) == []


def run_closed(sb, name, code):
  t0 = time.monotonic()
  try:
    r = sb.submit(name, code).result(timeout=60)
  finally:
    sb.close_session(name)
  assert time.monotonic() - t0 <= TIMEOUT + 1.0
  left = wait_until_gone(lambda: procs_with_uid(*sb.uid_range))
  assert left == [], ("a sandboxed process survived its session", left)
  return r


def test_reports_seccomp_network_mode(sb):
  assert sb.isolation["tier"] == "seccomp" and sb.isolation["network"] == "seccomp"


def test_socket_to_local_server_is_refused(sb):
  with host_listener() as (port, accepted):
    r = run_closed(sb, "net", f"import socket\nsocket.create_connection(('127.0.0.1', {port}))")
  assert r.status == Status.ERROR and r.output.startswith("PermissionError"), r.output
  assert accepted == []


def test_setsid_is_refused_so_daemons_die_with_the_group(sb):
  code = ("import os, time\n"
          "if os.fork() == 0:\n"
          "  try:\n    os.setsid()\n  except OSError as e:\n    print('setsid', e.errno, flush=True)\n"
          "  if os.fork() == 0:\n    time.sleep(1000)\n  os._exit(0)\n"
          "time.sleep(0.3)")
  r = run_closed(sb, "daemon", code)
  assert r.status == Status.OK and r.output == "setsid 1", r.output


def test_fork_bomb_is_contained(sb):
  r = run_closed(sb, "bomb", "import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n"
                 "    pass")
  assert r.status == Status.TIMEOUT


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as another uid")
def test_uid_sweep_kills_what_left_the_process_group():
  # The zygote's second net when a process group outlives the kill loop's bound: everything of
  # the session's uid dies, a process of a neighbouring uid does not.
  from aci_jax.sandbox.zygote import Zygote
  import subprocess
  uid = 61_000 + os.getpid() % 1000
  procs = [subprocess.Popen(["sleep", "1000"], user=u, start_new_session=True)
           for u in (uid, uid, uid + 1)]
  try:
    Zygote._kill_uid(uid)
    assert [p.wait(timeout=10) for p in procs[:2]] == [-9, -9]
    assert procs[2].poll() is None
  finally:
    for p in procs:
      p.kill()
      p.wait()


def test_cannot_signal_host_or_server(sb):
  pids = sb.process_ids()
  r = run_closed(sb, "sig", f"import os\nfor p in ({os.getpid()}, {pids['server']}, "
                 f"{pids['zygote']}):\n  try:\n    os.kill(p, 9)\n    print('sent')\n"
                 "  except OSError as e:\n    print(e.errno)")
  assert r.output == "1\n1\n1", r.output
  assert sb.process_ids() == pids


def test_world_writable_leftovers_are_removed(sb, tmp_path):
  marker = os.urandom(4).hex()
  paths = [f"/tmp/fb_{marker}", f"/dev/shm/fb_{marker}", str(tmp_path / "x")]
  code = ("res = []\n"
          f"for p in {paths!r}:\n  try:\n    open(p, 'w').write('x')\n    res.append('w')\n"
          "  except OSError as e:\n    res.append(e.errno)\nprint(res)")
  r = run_closed(sb, "writes", code)
  assert r.output.endswith("13]"), r.output  # the test's own directory: permission denied
  time.sleep(0.2)
  assert not any(os.path.exists(p) for p in paths)


def test_environment_is_scrubbed(sb):
  os.environ["ACI_FALLBACK_SECRET"] = "hunter2"  # set after start: the server never had it
  r = run_closed(sb, "env", "import os\nsorted(os.environ)")
  assert "ACI_FALLBACK_SECRET" not in r.output and "PATH" in r.output
