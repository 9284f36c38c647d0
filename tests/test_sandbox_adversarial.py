"""Adversarial programs against the sandbox (issue 3): each has an expected status, arrives
within the time limit + 1 s, leaves no process behind (checked in /proc), and the host, server
and zygote survive it. Runs with the strongest isolation this machine offers (auto)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from aci_jax.sandbox import Sandbox, SandboxConfig, Status
from aci_jax.sandbox.pool import pids_with_uid
from sandbox_helpers import host_listener, wait_until_gone


def procs_with_uid(lo: int, hi: int) -> list[int]:
  return pids_with_uid(lo, hi, zombies=True)  # a zombie left behind counts as a leak

TIMEOUT = 3.0
SECRET = "aci-secret-" + os.urandom(8).hex()
os.environ["ACI_SANDBOX_TEST_SECRET"] = SECRET  # in the host's environment before the server starts


def cmdline_matches(marker: str) -> list[int]:
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit() and int(name) != os.getpid():
      try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
          if marker.encode() in f.read():
            out.append(int(name))
      except OSError:
        pass
  return out


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def _module_sandbox(timeout_s: float):
  # spares=0: with no idle pre-forked processes, "no process of the pool's uids" is an exact
  # proof that nothing of a session survived (a spare, once taken, is killed the same way).
  box = Sandbox(SandboxConfig(timeout_s=timeout_s, memory_mb=512, max_workers=2, spares=0))
  yield box
  pids = box.process_ids()
  box.shutdown()
  assert not alive(pids["server"]) and not alive(pids["zygote"])
  assert procs_with_uid(*box.uid_range) == []


@pytest.fixture(scope="module")
def sb():
  yield from _module_sandbox(TIMEOUT)


def run_checked(sb: Sandbox, name: str, code: str, expected: Status):
  """Runs one cell in a fresh session, closes it, and proves nothing of it survives."""
  pids = sb.process_ids()
  t0 = time.monotonic()
  try:
    r = sb.submit(name, code).result(timeout=60)
  finally:
    sb.close_session(name)
  latency = time.monotonic() - t0
  assert r.status == expected, (r.status, r.output, r.stderr_tail)
  # The wall clock the server enforces runs from when the session's process is ready (its fork
  # and set-up are not the cell's); the host's latency adds that start, which a loaded machine
  # stretches, so it gets a looser bound.
  assert r.seconds <= sb.config.timeout_s + 1.0, r.seconds
  assert latency <= sb.config.timeout_s + 10.0, latency
  left = wait_until_gone(lambda: procs_with_uid(*sb.uid_range))
  assert left == [], ("a sandboxed process survived its session", sb.isolation["tier"], left)
  assert alive(pids["server"]) and alive(pids["zygote"]), "the sandbox server was hurt"
  assert sb.process_ids() == pids, "the server was restarted"
  assert sb.run(name + "/after", "print(6*7)").output == "42"  # still serving
  sb.close_session(name + "/after")
  return r


def test_isolation_report_names_active_network_mode(sb):
  assert sb.isolation["network"] in ("netns+seccomp", "seccomp")
  assert sb.isolation["threads"] == 1  # the zygote forks from a single-threaded image


def test_infinite_loop(sb):
  r = run_checked(sb, "loop", "while True:\n  pass", Status.TIMEOUT)
  assert r.output == "Timeout Error"


def test_long_sleep(sb):
  run_checked(sb, "sleep", "import time\ntime.sleep(1000)", Status.TIMEOUT)


def test_fork_bomb(sb):
  code = "import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass"
  run_checked(sb, "forkbomb", code, Status.TIMEOUT)


# The memory bombs touch every page up to the limit (bytearray zero-fills): ~0.2 s here, but a
# fresh CI VM under load once took over 3 s for it (guest page faults are slow while the host backs
# the memory), and the wall-clock deadline then answered TIMEOUT. A generous deadline keeps the
# question these tests ask (does the memory limit end the cell, and call it MEMORY?) apart from
# the machine's speed: with a broken limit the bomb would still run into that deadline.
BOMB_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def bomb_sb():
  yield from _module_sandbox(BOMB_TIMEOUT)


def test_memory_bomb_single_allocation(bomb_sb):
  r = run_checked(bomb_sb, "membomb1", "x = bytearray(50 * 1024**3)", Status.MEMORY)
  assert r.output.startswith("MemoryError")


def test_memory_bomb_growing(bomb_sb):
  code = "chunks = []\nwhile True:\n  chunks.append(bytearray(16 * 1024**2))"
  run_checked(bomb_sb, "membomb2", code, Status.MEMORY)


def test_gigabytes_of_output(sb):
  code = "import sys\nblock = 'x' * 65536\nwhile True:\n  sys.stdout.write(block)"
  r = run_checked(sb, "flood", code, Status.OUTPUT_LIMIT)
  assert "OutputLimitError" in r.output and len(r.output) <= 403


def test_deep_recursion_is_an_error(sb):
  r = run_checked(sb, "recursion", "def f(n):\n  return f(n + 1)\nf(0)", Status.ERROR)
  assert r.output.startswith("RecursionError")


def test_recursion_past_the_c_stack_is_killed(sb):
  # hash() of a deeply nested tuple recurses in C with no recursion check, one frame per level
  # (linear time: repr() of nested lists, the earlier probe, is quadratic in the depth it
  # reaches, so its time grew with the host's stack limit until it timed out on a CI machine).
  code = "t = ()\nfor _ in range(10**6):\n  t = (t,)\nhash(t)"
  r = run_checked(sb, "cstack", code, Status.KILLED)
  assert "SIGSEGV" in r.output


def test_stack_limit_is_the_configured_one_whatever_the_host_has(sb):
  code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_STACK))"
  r = run_checked(sb, "stack", code, Status.OK)
  assert r.output == str((8 << 20, 8 << 20)), r.output  # SandboxConfig.stack_mb = 8


def test_os_system_and_subprocess_stay_inside(sb):
  code = ("import os, subprocess\n"
          "print(os.system('id -u > uid.txt'))\n"
          "print(open('uid.txt').read().strip())\n"
          "subprocess.Popen(['sleep', '7331'])\n"
          "print(subprocess.run(['sh', '-c', 'echo sub'], capture_output=True, text=True).stdout)")
  r = run_checked(sb, "system", code, Status.OK)
  lines = r.output.split("\n")
  assert lines[0] == "0" and lines[-1] == "sub", r.output
  assert int(lines[1]) >= sb.uid_range[0]  # the shell ran as the session's unprivileged uid
  assert cmdline_matches("7331") == []  # the background sleep died with the session


def test_socket_connect_to_local_server_fails(sb):
  with host_listener() as (port, accepted):
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'leak')\nprint('connected')")
    r = run_checked(sb, "socket", code, Status.ERROR)
  assert accepted == [], "the sandbox reached a server on the host"
  assert "connected" not in r.output
  assert ("unreachable" in r.output or "not permitted" in r.output), r.output


def test_writes_outside_the_working_directory_do_not_appear(sb, tmp_path):
  host_dir = tmp_path / "host"
  host_dir.mkdir()
  os.chmod(tmp_path, 0o755)
  os.chmod(host_dir, 0o777)  # even a world-writable host directory must stay untouched
  marker = os.urandom(4).hex()
  targets = [str(host_dir / "canary"), f"/tmp/canary_{marker}", f"/var/tmp/canary_{marker}",
             f"/dev/shm/canary_{marker}", os.path.abspath(f"canary_{marker}"),
             f"/root/canary_{marker}", f"/etc/canary_{marker}"]
  code = ("import os\nres = []\n"
          f"for p in {targets!r}:\n"
          "  try:\n    open(p, 'w').write('x')\n    res.append('wrote')\n"
          "  except OSError as e:\n    res.append(type(e).__name__)\n"
          "open('inside.txt', 'w').write('fine')\nprint(res, open('inside.txt').read())")
  r = run_checked(sb, "writes", code, Status.OK)
  assert r.output.endswith("fine")
  for p in targets:
    assert not os.path.exists(p), f"{p} appeared on the host"


def test_parent_environment_and_files_are_unreachable(sb, tmp_path):
  secret_file = tmp_path / "secret.txt"
  secret_file.write_text(SECRET)
  os.chmod(tmp_path, 0o755)
  os.chmod(secret_file, 0o644)  # even world-readable: the host's temp dirs are not mounted
  code = ("import os, glob\nout = [repr(dict(os.environ))]\n"
          f"for p in ['/proc/{os.getpid()}/environ', '/proc/1/environ', '/proc/self/environ',"
          f" {str(secret_file)!r}] + glob.glob('/proc/*/environ'):\n"
          "  try:\n    out.append(open(p, 'rb').read().decode(errors='replace'))\n"
          "  except OSError as e:\n    out.append(type(e).__name__)\n"
          "print('\\n'.join(out))")
  sb_cfg = sb.config
  r = sb.submit("environ", code).result()
  assert r.status == Status.OK, r.output
  full = r.stdout_bytes
  assert full > 0
  # The display is truncated, so check the whole stream by asking for a count inside.
  count = sb.run("environ", "sum(o.count(%r) for o in out)" % SECRET)
  assert count.output == "0", count.output
  env = sb.run("environ", "sorted(os.environ)")
  assert "ACI_SANDBOX_TEST_SECRET" not in env.output and "HOME" in env.output
  sb.close_session("environ")
  assert sb_cfg.timeout_s == TIMEOUT


def test_signalling_the_parent_and_the_sandbox_processes_fails(sb):
  pids = sb.process_ids()
  code = ("import os, signal\nres = []\n"
          f"for pid in [{os.getpid()}, {pids['server']}, {pids['zygote']}, os.getppid() or 1]:\n"
          "  for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n"
          "    try:\n      os.kill(pid, sig)\n      res.append('sent')\n"
          "    except OSError as e:\n      res.append(type(e).__name__)\n"
          "try:\n  os.kill(-1, signal.SIGKILL)\nexcept OSError:\n  pass\nprint(res)")
  r = run_checked(sb, "signals", code, Status.OK)
  assert "'sent'" not in r.output.replace("'sent', 'sent', 'sent']", "") or \
      sb.isolation["processes"] == "pid-namespace", r.output


def test_signalling_other_process_groups_fails(sb):
  victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
  try:
    code = (f"import os, signal\nfor f in (lambda: os.killpg({victim.pid}, 9), "
            f"lambda: os.kill({victim.pid}, 9), lambda: os.kill(-{victim.pid}, 9)):\n"
            "  try:\n    f()\n  except OSError as e:\n    print(type(e).__name__)")
    run_checked(sb, "pgroups", code, Status.OK)
    time.sleep(0.1)
    assert victim.poll() is None, "the sandbox killed a host process group"
  finally:
    victim.kill()
    victim.wait()


def test_sigterm_handler_that_refuses_to_die(sb):
  code = ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
          "  signal.signal(s, lambda *a: None)\nwhile True:\n  pass")
  run_checked(sb, "sigterm", code, Status.TIMEOUT)


def test_threads_spinning_after_the_cell_returns(sb):
  code = ("import threading\ndef spin():\n  while True:\n    pass\n"
          "for _ in range(2):\n  threading.Thread(target=spin, daemon=True).start()\nprint('started')")
  r = sb.submit("threads", code).result()
  assert r.status == Status.OK and r.output == "started"
  # A cell may not leave work running: the session's process is gone right after the result.
  deadline = time.monotonic() + 2.0
  while procs_with_uid(*sb.uid_range) and time.monotonic() < deadline:
    time.sleep(0.02)
  assert procs_with_uid(*sb.uid_range) == []
  sb.close_session("threads")


def test_daemonised_grandchild_is_dead_afterwards(sb):
  code = ("import os, time\n"
          "if os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n"
          "    os.execv('/bin/sleep', ['sleep', '4321'])\n  os._exit(0)\n"
          "time.sleep(0.3)\nprint('daemonised')")
  r = run_checked(sb, "daemon", code, Status.OK)
  assert r.output == "daemonised"
  assert cmdline_matches("4321") == [], "the daemonised grandchild survived"


def test_ctypes_segfault(sb):
  r = run_checked(sb, "segv", "import ctypes\nctypes.string_at(0)", Status.KILLED)
  assert r.output == "Killed: process terminated by signal 11 (SIGSEGV)"


def test_os_exit(sb):
  r = run_checked(sb, "osexit", "import os\nprint('bye', flush=True)\nos._exit(3)", Status.KILLED)
  assert r.output == "Killed: process exited with status 3"


def test_closing_stdout_then_next_cell_prints(sb):
  r = sb.submit("closeout", "import os, sys\nsys.stdout.close()\nos.close(1)\nprint('x')").result()
  assert r.status == Status.ERROR and "closed file" in r.output
  assert sb.run("closeout", "print('back')").output == "back"
  sb.close_session("closeout")


def test_binary_junk_on_stdout(sb):
  code = "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 64)\nsys.stdout.flush()"
  r = run_checked(sb, "junk", code, Status.OK)
  r.output.encode("utf-8")  # valid text for the tokenizer
  assert len(r.output) <= 403 and "\ufffd" in r.output


def test_input_reads_nothing(sb):
  r = run_checked(sb, "input", "x = input('number? ')", Status.ERROR)
  assert r.output == "EOFError: EOF when reading a line"


def test_one_10mb_line(sb):
  r = run_checked(sb, "bigline", "print('y' * 10_000_000)", Status.OK)
  assert r.output == "y" * 200 + "..." + "y" * 200
  assert r.stdout_bytes == 10_000_001


def test_unicode(sb):
  r = run_checked(sb, "unicode", "print('∑ café 数学 🙂')\n'ü' * 3", Status.OK)
  assert r.output == "∑ café 数学 🙂\n'üüü'"


def test_kill_own_process_group(sb):
  # As init of its PID namespace the runner is immune to signals sent from inside it.
  pidns = sb.isolation["processes"] == "pid-namespace"
  run_checked(sb, "killpg0", "import os, signal\nos.kill(0, signal.SIGKILL)",
              Status.OK if pidns else Status.KILLED)


def test_privilege_escalation_and_namespace_syscalls_are_refused(sb):
  code = ("import os, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nres = []\n"
          "for f in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chroot('/')):\n"
          "  try:\n    f()\n    res.append('ok')\n  except OSError as e:\n    res.append(e.errno)\n"
          f"res.append(libc.ptrace(16, {os.getpid()}, 0, 0))\n"
          "res.append(libc.unshare(0x10000000))\nres.append(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None))\n"
          "print(res)")
  r = run_checked(sb, "escalate", code, Status.OK)
  assert r.output == "[1, 1, 1, -1, -1, -1]", r.output


def test_filling_the_disk_hits_the_file_size_limit(sb):
  code = "with open('big.bin', 'wb') as f:\n  f.write(b'0' * (200 * 1024**2))"
  r = run_checked(sb, "disk", code, Status.ERROR)
  assert "File too large" in r.output or "No space left" in r.output, r.output


def test_host_processes_are_invisible(sb):
  if sb.isolation["processes"] != "pid-namespace":
    pytest.skip("needs a PID namespace")
  r = run_checked(sb, "procs", "import os\nsorted(int(p) for p in os.listdir('/proc') if p.isdigit())",
                  Status.OK)
  assert r.output == "[1]", r.output


def test_garbage_on_the_control_pipe(sb):
  code = "import os, time\nos.write(4, b'\\xff' * 8)\ntime.sleep(0.5)"
  r = run_checked(sb, "garbage", code, Status.KILLED)
  assert r.output == "Killed: the process broke the sandbox protocol"


def test_no_inherited_descriptors(sb):
  # fds 0-6 are the runner's own (stdin, out, err, requests, replies, copies of out/err);
  # listdir itself holds one more while reading.
  code = "import os\nfds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\nfds[:7], len(fds)"
  r = run_checked(sb, "fds", code, Status.OK)
  assert r.output == "([0, 1, 2, 3, 4, 5, 6], 8)", r.output


# --- Issue 18: weaknesses measured with held-out attack programs ------------------------------
# Each test below is checked from outside the sandbox (host memory, host /dev/pts, host files,
# host processes) and runs in both tiers: the strongest this machine offers and the seccomp
# fallback. Every one of them failed on the code before issue 18.

MEM_MB = 512
# The fallback tier cannot import from an interpreter directory other users cannot read (a pyenv
# under /root): preload what these programs use.
_EXTRA = ("signal", "ctypes", "fcntl", "json", "struct", "mmap", "socket", "select")


@pytest.fixture(scope="module", params=["auto", "seccomp"])
def tsb(request):
  box = Sandbox(SandboxConfig(isolation=request.param, timeout_s=TIMEOUT, memory_mb=MEM_MB,
                              max_workers=2, spares=0,
                              preload=SandboxConfig().preload + _EXTRA))
  yield box
  box.shutdown()
  assert procs_with_uid(*box.uid_range) == []


def _kb_fields(path: str, names: tuple[str, ...]) -> int:
  total = 0
  try:
    with open(path) as f:
      for line in f:
        k, _, v = line.partition(":")
        if k in names:
          total += int(v.split()[0])
  except OSError:
    pass
  return total


def _session_memory_mib(sb: Sandbox) -> float:
  """Anonymous and shared memory of every process of the pool's sessions, proportional to
  sharing (the warm image shared with the zygote counts for its share only), from the host."""
  kb = sum(_kb_fields(f"/proc/{p}/smaps_rollup", ("Pss_Anon", "Pss_Shmem"))
           for p in pids_with_uid(*sb.uid_range))
  return kb / 1024


def _run_sampled(sb: Sandbox, name: str, code: str, probe, period: float = 0.02):
  """Runs one cell of session `name`: (samples of probe(sb) taken while it ran, its result)."""
  fut = sb.submit(name, code)
  samples = [probe(sb)]
  while not fut.done():
    samples.append(probe(sb))
    time.sleep(period)
  return samples, fut.result()


def _typical(samples: list[float]) -> float:
  """The 80th percentile. For a sum over several processes read one after the other: while the
  kernel kills one child and another grows, a single sample can count both; the attack holds its
  memory for a good part of the cell, so this is what it held without those transients."""
  return sorted(samples)[int(0.8 * (len(samples) - 1))]


def _session_cpu_s(sb: Sandbox) -> float:
  total = 0
  for p in pids_with_uid(*sb.uid_range):
    try:
      with open(f"/proc/{p}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
      total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError):
      pass
  return total / os.sysconf("SC_CLK_TCK")


def _host_has_memory_cgroup() -> bool:
  """Asked here, not from the sandbox's report: a writable v1 memory hierarchy, or a v2 one
  offering the memory controller to our cgroup. Without, the sandbox can only limit memory per
  process (docs/sandbox.md), and the tests that need a session-wide limit are skipped."""
  with open("/proc/self/cgroup") as f:
    lines = [l.rstrip("\n").split(":", 2) for l in f]
  for _, ctrls, path in lines:
    if "memory" in ctrls.split(","):
      return os.access(f"/sys/fs/cgroup/memory{path}", os.W_OK)
  for _, ctrls, path in lines:
    if ctrls == "":
      try:
        with open(f"/sys/fs/cgroup{path}/cgroup.controllers") as f:
          return "memory" in f.read().split()
      except OSError:
        return False
  return False


def test_memory_limit_holds_for_forked_children_together(tsb):
  if not _host_has_memory_cgroup():
    pytest.skip("no memory cgroup here: the limit is per process (see docs/sandbox.md)")
  # Six children each touch 150 MiB (each under its own address-space limit): 900 MiB in all.
  code = ("import os, time\nkids = []\nfor _ in range(6):\n  pid = os.fork()\n  if pid == 0:\n"
          "    try:\n      b = bytearray(150 * 2**20)\n"  # zero-filled: every page touched
          "      time.sleep(1.5)\n    finally:\n      os._exit(0)\n  kids.append(pid)\n"
          "for k in kids:\n  os.waitpid(k, 0)\nprint('done')")
  samples, r = _run_sampled(tsb, "forkmem", code, _session_memory_mib)
  peak = _typical(samples)
  tsb.close_session("forkmem")
  # Pages of the warm image shared with the zygote are charged to the zygote, not the session,
  # but proportional sharing still gives the session's processes most of them.
  image = _kb_fields(f"/proc/{tsb.process_ids()['zygote']}/status", ("RssAnon",)) / 1024
  assert peak <= MEM_MB + image + 16, (
      f"the session held {peak:.0f} MiB under memory_mb={MEM_MB} (warm image {image:.0f} MiB)")
  # Past the limit the kernel reclaims, then OOM-kills inside the session: any outcome of the
  # cell's own is fine, as long as the sandbox itself did not fail.
  assert r.status != Status.SANDBOX_FAILURE, r.output


def test_memfd_memory_is_counted(tsb):
  # 900 MiB in memory-backed files: memfd pages are no address space, so RLIMIT_AS misses them
  # (each file stays under the 64 MiB file-size limit).
  # posix_fallocate allocates every page at once: fast even on a loaded machine.
  code = ("import os, time\nfds = []\nfor _ in range(15):\n"
          "  fd = os.memfd_create('m')\n  os.posix_fallocate(fd, 0, 60 * 2**20)\n"
          "  fds.append(fd)\ntime.sleep(1.0)\nprint('held', len(fds))")
  samples, r = _run_sampled(tsb, "memfd", code, _session_file_mib)
  peak = max(samples)
  assert peak <= MEM_MB + 32, f"the session held {peak:.0f} MiB of memory-backed files"
  if _host_has_memory_cgroup():  # counted, then OOM-killed inside the session
    assert (r.status, r.output) == (
        Status.MEMORY, "MemoryError: the session went over its memory limit"), r
  else:  # refused
    assert r.status == Status.ERROR and r.output.startswith("PermissionError"), r
  assert tsb.run("memfd", "print(1)").output == "1"  # the session goes on (a new process)
  tsb.close_session("memfd")


def test_the_report_names_the_memory_accounting(tsb):
  if _host_has_memory_cgroup():
    assert tsb.isolation["memory_cgroup"] and "cgroup" in tsb.isolation["memory"]
    assert os.path.isdir(tsb.isolation["memory_cgroup"])  # the pool's parent cgroup, on the host
  else:
    assert tsb.isolation["memory_cgroup"] is None and "RLIMIT_AS" in tsb.isolation["memory"]
    assert any("no memory cgroup" in w for w in tsb.isolation["warnings"])


def test_timer_signal_handler_cannot_burn_cpu_between_cells(tsb):
  code = ("import signal, time\ndef burn(*a):\n  t = time.process_time()\n"
          "  while time.process_time() - t < 0.04:\n    pass\n"
          "signal.signal(signal.SIGALRM, burn)\nsignal.signal(signal.SIGPROF, burn)\n"
          "signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)\n"
          "signal.setitimer(signal.ITIMER_PROF, 0.05, 0.05)\nprint('armed')")
  r = tsb.submit("timer", code).result()
  assert r.output == "armed"
  before = _session_cpu_s(tsb)
  time.sleep(3.0)
  burnt = _session_cpu_s(tsb) - before  # a process that was killed meanwhile adds nothing
  tsb.close_session("timer")
  assert burnt < 0.3, f"the idle session used {burnt:.2f} CPU-s in 3 s between cells"


def test_idle_session_running_code_after_its_result_is_killed(tsb):
  # The cell replaces the read the runner blocks in between cells with a busy loop.
  code = "import os\ndef spin(fd, n):\n  while True:\n    pass\nos.read = spin\nprint('patched')"
  r = tsb.submit("spin", code).result()
  assert r.output == "patched"
  deadline = time.monotonic() + 4.0
  while procs_with_uid(*tsb.uid_range) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert procs_with_uid(*tsb.uid_range) == [], "an idle session kept burning CPU"
  # The session comes back (rebuilt by replay, which spins again and is killed again).
  assert tsb.run("spin", "print(1)").output == "1"
  tsb.close_session("spin")


def _frame(msg: dict) -> str:
  return (f"import json, struct\nbody = json.dumps({msg!r}).encode()\n"
          "frame = struct.pack('>I', len(body)) + body\n")


def test_a_child_cannot_forge_the_cells_result(tsb):
  code = (_frame({"op": "result", "status": "ok", "detail": "", "lingering": False}) +
          "import os, time\nif os.fork() == 0:\n  os.write(4, frame)\n  os._exit(0)\n"
          "time.sleep(0.5)\nprint('the real output')")
  r = tsb.submit("forge", code).result()
  tsb.close_session("forge")
  assert r.output != "Done", "a forged result frame replaced the cell's output"
  assert r.status == Status.KILLED and "protocol" in r.output, (r.status, r.output)


def test_the_cell_cannot_forge_a_sandbox_failure(tsb):
  code = _frame({"op": "setup_error", "detail": "forged by the cell"}) + (
      "import os, time\nos.write(4, frame)\ntime.sleep(0.5)\nprint('x')")
  r = tsb.submit("forge2", code).result()
  tsb.close_session("forge2")
  assert r.status != Status.SANDBOX_FAILURE and "forged" not in r.output, (r.status, r.output)


def _fs_isolated(sb: Sandbox) -> bool:
  """Whether the tier can confine the filesystem view: the namespaces tier, or the seccomp tier
  on a kernel with Landlock (asked here, not from the sandbox's report). Else the tests below
  are skipped for it, and docs/sandbox.md says so."""
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  landlock_abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
  return sb.isolation["tier"] == "namespaces" or landlock_abi > 0


def test_no_host_pseudo_terminal_is_created(tsb):
  if not _fs_isolated(tsb):
    pytest.skip("this tier leaves /dev/ptmx to uid permissions")
  before = set(os.listdir("/dev/pts"))
  code = ("import os, time\nres = []\n"
          "for f in (os.openpty, lambda: os.open('/dev/ptmx', os.O_RDWR),"
          " lambda: os.open('/dev/pts/ptmx', os.O_RDWR)):\n  try:\n    res.append(f())\n"
          "  except OSError as e:\n    res.append(type(e).__name__)\ntime.sleep(1.0)\nprint(res)")
  fut = tsb.submit("pty", code)
  seen = set()
  while not fut.done():
    seen |= set(os.listdir("/dev/pts"))
    time.sleep(0.05)
  r = fut.result()
  tsb.close_session("pty")
  assert seen - before == set(), f"the cell allocated host terminals: {r.output}"
  assert r.status == Status.OK and "'" in r.output, r.output  # every attempt failed (names)


def _lib_file(module: str = "sympy") -> str:
  import importlib.util
  return importlib.util.find_spec(module).origin


def test_file_locks_are_not_shared_with_the_host(tsb):
  import fcntl
  # One file per tier: under pytest -n 2 the other tier's copy of this test may run at the same
  # time, and its host-side lock must not look like a lock taken in this sandbox.
  path = _lib_file("sympy" if tsb.isolation["tier"] == "namespaces" else "numpy")
  host = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(host, fcntl.LOCK_EX)
    # The host holds a lock on a library file the cell can read: the cell must not see it ...
    code = (f"import fcntl, os\nfd = os.open({path!r}, os.O_RDONLY)\nres = []\n"
            "for f in (lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),"
            " lambda: fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)):\n"
            "  try:\n    f()\n    res.append('locked')\n  except OSError as e:\n"
            "    res.append(e.errno)\nprint(res)")
    r = tsb.submit("locks", code).result()
    assert r.status == Status.OK, r.output
    assert "11" not in r.output, f"the cell saw the host's lock: {r.output}"
    fcntl.flock(host, fcntl.LOCK_UN)
    # ... and a lock the cell takes must not be seen by the host.
    code = (f"import fcntl, os, time\nfd = os.open({path!r}, os.O_RDONLY)\ntry:\n"
            "  fcntl.flock(fd, fcntl.LOCK_EX)\nexcept OSError:\n  pass\ntime.sleep(1.0)")
    fut = tsb.submit("locks", code)
    time.sleep(0.5)
    try:
      fcntl.flock(host, fcntl.LOCK_EX | fcntl.LOCK_NB)
      seen = False
      fcntl.flock(host, fcntl.LOCK_UN)
    except BlockingIOError:
      seen = True
    fut.result()
    assert not seen, "a lock taken in the sandbox was visible on the host"
  finally:
    os.close(host)
    tsb.close_session("locks")


def test_file_access_notifications_are_refused(tsb):
  lib_dir = os.path.dirname(_lib_file())
  code = ("import ctypes, os, select\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "fd = libc.inotify_init1(0)\nif fd < 0:\n  print('refused', ctypes.get_errno())\nelse:\n"
          f"  libc.inotify_add_watch(fd, {lib_dir.encode()!r}, 0x20 | 0x1)\n  n = 0\n"
          "  while select.select([fd], [], [], 1.5)[0]:\n    n += len(os.read(fd, 65536))\n"
          "  print('events', n)")
  fut = tsb.submit("inotify", code)
  while not fut.done():  # the host (standing in for another session) reads the library
    for name in os.listdir(lib_dir)[:20]:
      p = os.path.join(lib_dir, name)
      if os.path.isfile(p):
        with open(p, "rb") as f:
          f.read(1)
    time.sleep(0.05)
  r = fut.result()
  tsb.close_session("inotify")
  assert r.output.startswith("refused"), f"the cell watched the shared library: {r.output}"


def test_host_files_outside_what_python_needs_are_unreadable(tsb):
  if not _fs_isolated(tsb):
    pytest.skip("this tier leaves the host's files to uid permissions")
  secret = "aci-answer-" + os.urandom(6).hex()
  run = f"/var/tmp/aci_run_{os.urandom(4).hex()}"
  os.makedirs(run)
  os.chmod(run, 0o755)
  planted = [f"{run}/answers.jsonl", f"{run}/eval_scores.jsonl"]
  try:
    for p in planted:
      with open(p, "w") as f:
        f.write(secret + "\n")
      os.chmod(p, 0o644)  # world-readable, as a run's files usually are
    targets = planted + [os.path.abspath(__file__), "/etc/hostname", "/etc/passwd",
                         f"/proc/{os.getpid()}/cmdline"]  # the host test process
    code = ("import os\nhits, errs = 0, []\n"
            f"for p in {targets!r}:\n  try:\n"
            f"    hits += {secret!r} in open(p, errors='replace').read()\n"
            "    errs.append('read')\n  except OSError as e:\n    errs.append(type(e).__name__)\n"
            "try:\n  top = sorted(os.listdir('/'))\n"
            "except OSError as e:\n  top = [type(e).__name__]\n"
            "print(hits, errs, top)")
    r = tsb.submit("files", code).result()
    tsb.close_session("files")
    assert r.status == Status.OK, r.output
    assert secret not in r.output and r.output.startswith("0 "), r.output
    errs = r.output.split("[", 1)[1].split("]", 1)[0]
    assert "read" not in errs, f"host files were readable: {r.output}"
    top = r.output.rsplit("[", 1)[1]
    for name in ("'var'", "'home'", "'opt'", "'srv'", "'mnt'", "'sys'"):
      assert name not in top, f"{name} is visible: {r.output}"
  finally:
    for p in planted:
      os.unlink(p)
    os.rmdir(run)


def test_a_deep_directory_tree_cannot_break_cleanup(tsb):
  # 1,500 levels: past Python's recursion limit (the old cleanup died at ~1,000), and quick to
  # build (Landlock checks each access against every level above it, so depth costs n^2).
  pids = tsb.process_ids()
  restarts = tsb.metrics()["sandbox/restarts"]
  bystander = tsb.submit("bystander", "import time\ntime.sleep(1.0)\nprint('still here')")
  code = ("import os\nfor _ in range(1500):\n  os.mkdir('d')\n  os.chdir('d')\n"
          "open('leaf', 'w').write('x')\nprint('deep')")
  r = tsb.submit("deep", code).result()
  tsb.close_session("deep")
  assert r.status == Status.OK and r.output == "deep", r.output
  assert bystander.result().output == "still here"  # another session's cell was not hurt
  tsb.close_session("bystander")
  deadline = time.monotonic() + 5.0
  while procs_with_uid(*tsb.uid_range) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert tsb.process_ids() == pids and tsb.metrics()["sandbox/restarts"] == restarts
  work = tsb.isolation.get("workdirs")
  if work:  # the fallback tier's session directories live on the host: nothing may be left
    while os.listdir(work) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert os.listdir(work) == [], "a session directory was left on the host"
  for i in range(3):  # later sessions start (no 'File exists')
    assert tsb.run(f"after{i}", "print(1)").output == "1"
    tsb.close_session(f"after{i}")


def test_remove_tree_handles_any_shape(tmp_path):
  from aci_jax.sandbox.files import remove_tree
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "keep").write_text("x")
  top = tmp_path / "top"
  top.mkdir()
  fd = os.open(top, os.O_RDONLY)
  try:  # 5,000 levels (no path of them fits PATH_MAX), built relative to descriptors
    for i in range(5000):
      os.mkdir("d", dir_fd=fd)
      if i % 700 == 0:
        os.symlink(str(outside), "link", dir_fd=fd)  # removed, never followed
        os.mkdir("wide", dir_fd=fd)
      nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
      os.close(fd)
      fd = nfd
    os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
  finally:
    os.close(fd)
  remove_tree(str(top))
  assert not top.exists() and (outside / "keep").read_text() == "x"


def _session_file_mib(sb: Sandbox) -> float:
  """MiB in files that belong to the pool's sessions, found from the host: files their
  processes hold open (memfds included), and every file in the places a session can write:
  the pool's directory, the fallback tier's session directories, what their uids left in /tmp,
  /var/tmp and /dev/shm, and (namespaces tier) each session's private /tmp, reached through
  /proc/<pid>/root. Counted once per inode, so it is unaffected by other tests running at the
  same time (pytest -n 2)."""
  import stat as st_mod
  lo, hi = sb.uid_range
  seen: set = set()
  total = 0

  def add(st):
    nonlocal total
    if st_mod.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
      seen.add((st.st_dev, st.st_ino))
      total += st.st_blocks * 512

  pids = pids_with_uid(lo, hi)
  for p in pids:
    try:
      fds = os.listdir(f"/proc/{p}/fd")
    except OSError:
      continue
    for fd in fds:
      try:
        add(os.stat(f"/proc/{p}/fd/{fd}"))
      except OSError:
        pass
  roots = [sb._root, sb.isolation.get("workdirs") or sb._root]
  for d in ("/tmp", "/var/tmp", "/dev/shm"):
    for n in os.listdir(d):
      try:
        if lo <= os.lstat(os.path.join(d, n)).st_uid < hi:
          roots.append(os.path.join(d, n))
      except OSError:
        pass
  if sb.isolation["tier"] == "namespaces":
    roots += [f"/proc/{p}/root/tmp" for p in pids]
  for root in roots:
    try:
      dev = os.stat(root).st_dev
    except OSError:
      continue
    for dirpath, dirs, files in os.walk(root):
      # Stay on the root's filesystem: read-only binds of the interpreter's directories (a
      # .venv under /tmp, bound back over the session's /tmp) are not what a session wrote.
      dirs[:] = [d for d in dirs if _same_dev(os.path.join(dirpath, d), dev)]
      for f in files:
        try:
          add(os.lstat(os.path.join(dirpath, f)))
        except OSError:
          pass
  return total / 2**20


def _same_dev(path: str, dev: int) -> bool:
  try:
    return os.lstat(path).st_dev == dev
  except OSError:
    return False


def test_a_session_cannot_fill_the_disk_with_many_files(tsb):
  if tsb.isolation["tier"] != "namespaces" and not (_fs_isolated(tsb) and
                                                    _host_has_memory_cgroup()):
    pytest.skip("the seccomp tier has a total disk limit only with Landlock and a memory cgroup")
  # 900 MiB in files of 60 MiB each (each under the per-file limit), anywhere writable.
  code = ("import os, tempfile, time\nn = 0\n"
          "for d in [os.getcwd(), tempfile.gettempdir(), '/tmp', '/var/tmp', '/dev/shm']:\n"
          "  for i in range(15):\n    if n >= 15:\n      break\n    try:\n"
          "      with open(os.path.join(d, f'fill{i}_{os.getpid()}'), 'wb') as f:\n"
          "        os.posix_fallocate(f.fileno(), 0, 60 * 2**20)\n      n += 1\n"
          "    except OSError:\n      break\ntime.sleep(0.5)\nprint(n)")
  samples, r = _run_sampled(tsb, "fill", code, _session_file_mib)
  peak = max(samples)
  tsb.close_session("fill")
  assert peak <= MEM_MB + 32, f"one session wrote {peak:.0f} MiB ({r.status}: {r.output})"


def test_interpreter_libraries_stay_readable_under_the_session_tmp(tsb):
  # A checkout cloned under /tmp keeps its .venv there; each session mounts its own tmpfs on
  # /tmp, which hid the venv (only preloaded modules could be imported). The library files
  # must stay readable, and read-only, wherever the interpreter lives.
  path = _lib_file("sympy")
  code = (f"import os\nprint(len(open({path!r}, 'rb').read()) > 0)\n"
          f"try:\n  open({path!r}, 'ab')\n  print('writable')\nexcept OSError:\n  print('ro')")
  r = tsb.submit("libs", code).result()
  assert r.status == Status.OK, r.output
  assert r.output.split() == ["True", "ro"], r.output
