"""Per-session memory cgroups (stdlib only): the memory of every process of a session, its
memfds, shared memory and tmpfs files, counted together against one limit.

An address-space rlimit is per process: a cell that forks multiplies it, and memory-backed
files (memfd_create, tmpfs) are not address space at all. A memory cgroup charges every page a
session's processes fault in, whatever holds it, so forked children and memfds cannot escape it;
past the limit the kernel reclaims what it can, then OOM-kills inside the cgroup only.

Detected at start-up, in this order:
  cgroup2: the unified hierarchy has the memory controller and we may enable it for a subtree
    we create under our own cgroup (delegation; fails with EBUSY where our own cgroup holds
    processes and has not enabled it, e.g. a plain container);
  cgroup1: a writable v1 memory hierarchy (mounted at /sys/fs/cgroup/memory);
  none: the reason is reported, and the sandbox falls back to rlimits and seccomp (see
    docs/sandbox.md).

Cgroups are pooled: one per concurrently live session, created on first need, reused after the
session's processes are all dead (its memfds and tmpfs are gone by then; what stays charged is
reclaimable page cache), removed when the pool closes. Pooling keeps mkdir/rmdir (~0.2 ms) off
each session start; the child still moves itself in (one write, ~0.3 ms).
"""

from __future__ import annotations

import os

_V1_ROOT = "/sys/fs/cgroup/memory"
_V2_ROOTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def _own_path(controller: str) -> str | None:
  """Our cgroup path in the hierarchy of `controller` ("" = the v2 unified hierarchy)."""
  try:
    with open("/proc/self/cgroup") as f:
      for line in f:
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        if ctrls.split(",") == [controller] or (controller and controller in ctrls.split(",")):
          return path
  except OSError:
    pass
  return None


def _is_fs(path: str, fstype: str) -> bool:
  try:
    with open("/proc/self/mounts") as f:
      return any(l.split()[1] == path and l.split()[2] == fstype for l in f)
  except OSError:
    return False


def _write(path: str, text: str, dir_fd: int | None = None) -> None:
  fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
  try:
    os.write(fd, text.encode())
  finally:
    os.close(fd)


def _read(path: str, dir_fd: int | None = None) -> str:
  fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
  try:
    return os.read(fd, 1 << 16).decode()
  finally:
    os.close(fd)


class MemoryCgroups:
  """A pool of per-session memory cgroups under a parent made for this zygote."""

  def __init__(self, kind: str, parent: str, limit_bytes: int):
    self.kind = kind              # "cgroup1" | "cgroup2"
    self.parent = parent          # absolute path of our parent cgroup directory
    self.limit = limit_bytes
    # Held as descriptors: the zygote may later leave the host's mount tree (pivot_root).
    self.dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    self.base_fd = os.open(os.path.dirname(parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    self.free: list[str] = []     # names of idle cgroups (no live process)
    self.made = 0
    self.leaked: list[str] = []   # could not be emptied yet; retried on close

  # Files that differ between the two versions.
  @property
  def tasks_file(self) -> str:
    """Lists every thread of the cgroup, one per line."""
    return "tasks" if self.kind == "cgroup1" else "cgroup.threads"

  def acquire(self) -> str:
    """An idle cgroup's name (relative to parent), created with the limit if none is free."""
    if self.free:
      return self.free.pop()
    self.made += 1
    name = f"s{self.made}"
    os.mkdir(name, dir_fd=self.dir_fd)
    try:
      if self.kind == "cgroup1":
        _write(f"{name}/memory.limit_in_bytes", str(self.limit), self.dir_fd)
        try:  # no swap either (the file exists only when swap accounting is on)
          _write(f"{name}/memory.memsw.limit_in_bytes", str(self.limit), self.dir_fd)
        except OSError:
          pass
      else:
        _write(f"{name}/memory.max", str(self.limit), self.dir_fd)
        try:
          _write(f"{name}/memory.swap.max", "0", self.dir_fd)
        except OSError:
          pass
    except OSError:
      os.rmdir(name, dir_fd=self.dir_fd)
      raise
    return name

  def procs_fd(self, name: str) -> int:
    """A descriptor on the cgroup's cgroup.procs: the forked child writes "0" to it to move
    itself in (before it drops root), then closes it."""
    return os.open(f"{name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)

  def oom_kills(self, name: str) -> int:
    """How many processes the kernel OOM-killed in this cgroup so far (cumulative)."""
    try:
      text = _read(f"{name}/{'memory.oom_control' if self.kind == 'cgroup1' else 'memory.events'}",
                   self.dir_fd)
    except OSError:
      return 0
    for line in text.splitlines():
      k, _, v = line.partition(" ")
      if k == "oom_kill":
        return int(v)
    return 0

  def path(self, name: str) -> str:
    return os.path.join(self.parent, name)

  def release(self, name: str) -> None:
    """Back to the pool once empty (the caller has reaped every process of the session)."""
    try:
      empty = not _read(f"{name}/cgroup.procs", self.dir_fd).strip()
    except OSError:
      empty = False
    (self.free if empty else self.leaked).append(name)

  def close(self) -> None:
    """Removes every cgroup of the pool and the parent (the sessions are dead by now)."""
    if self.dir_fd < 0:
      return
    for name in self.free + self.leaked:
      try:
        os.rmdir(name, dir_fd=self.dir_fd)
      except OSError:
        pass
    self.free, self.leaked = [], []
    os.close(self.dir_fd)
    try:
      os.rmdir(os.path.basename(self.parent), dir_fd=self.base_fd)
    except OSError:
      pass
    os.close(self.base_fd)
    self.dir_fd = self.base_fd = -1


def _sweep_stale(base: str, prefix: str) -> None:
  """Removes parents left by zygotes that died without closing (SIGKILL): their pid is gone."""
  try:
    names = os.listdir(base)
  except OSError:
    return
  for n in names:
    if not n.startswith(prefix):
      continue
    try:
      pid = int(n[len(prefix):])
      os.kill(pid, 0)
      continue  # its owner is alive
    except (ValueError, PermissionError):
      continue
    except ProcessLookupError:
      pass
    d = os.path.join(base, n)
    try:
      for sub in os.listdir(d):
        if os.path.isdir(os.path.join(d, sub)):
          os.rmdir(os.path.join(d, sub))
      os.rmdir(d)
    except OSError:
      pass


PREFIX = "aci_sandbox_"


def _try_v2(limit: int) -> tuple[MemoryCgroups | None, str]:
  for root in _V2_ROOTS:
    if not _is_fs(root, "cgroup2"):
      continue
    own = _own_path("")
    if own is None:
      return None, "cgroup2: our cgroup is unknown"
    base = os.path.normpath(root + own)
    try:
      if "memory" not in _read(os.path.join(base, "cgroup.controllers")).split():
        return None, f"cgroup2 at {root}: no memory controller for our cgroup"
      _sweep_stale(base, PREFIX)
      if "memory" not in _read(os.path.join(base, "cgroup.subtree_control")).split():
        _write(os.path.join(base, "cgroup.subtree_control"), "+memory")
      parent = os.path.join(base, f"{PREFIX}{os.getpid()}")
      os.mkdir(parent)
      try:
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
      except OSError:
        os.rmdir(parent)
        raise
    except OSError as e:
      return None, f"cgroup2 at {root}: {e.strerror or e}"
    return MemoryCgroups("cgroup2", parent, limit), ""
  return None, "cgroup2: not mounted"


def _try_v1(limit: int) -> tuple[MemoryCgroups | None, str]:
  if not _is_fs(_V1_ROOT, "cgroup"):
    return None, "cgroup1: no memory hierarchy mounted"
  own = _own_path("memory")
  if own is None:
    return None, "cgroup1: our memory cgroup is unknown"
  base = os.path.normpath(_V1_ROOT + own)
  try:
    _sweep_stale(base, PREFIX)
    parent = os.path.join(base, f"{PREFIX}{os.getpid()}")
    os.mkdir(parent)
  except OSError as e:
    return None, f"cgroup1 at {base}: {e.strerror or e}"
  try:
    _write(os.path.join(parent, "memory.use_hierarchy"), "1")
  except OSError:
    pass  # already hierarchical (the default, and read-only once there are children)
  return MemoryCgroups("cgroup1", parent, limit), ""


def detect(limit_bytes: int) -> tuple[MemoryCgroups | None, list[str]]:
  """The best per-session memory accounting available, and why stronger ones are not."""
  reasons = []
  for attempt in (_try_v2, _try_v1):
    cg, why = attempt(limit_bytes)
    if cg is not None:
      return cg, reasons
    reasons.append(why)
  return None, reasons
