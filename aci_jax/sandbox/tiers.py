"""The isolation of the sessions, chosen once in the zygote at start-up: the strongest tier that
works here (namespaces, else seccomp), its set-up (the new root filesystem and network namespace,
or the Landlock view and session directories), the spawn spec every session starts from, and the
report the host receives."""

from __future__ import annotations

import json
import os
from typing import Callable

from aci_jax.sandbox import cgroups, isolation, runner
from aci_jax.sandbox.config import SandboxConfig


def _vm_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  return 0


class Isolation:
  """The chosen tier and what it set up (read by the zygote for every session it forks)."""

  def __init__(self, cfg: SandboxConfig, sandbox_root: str):
    self.cfg = cfg
    self.root = sandbox_root
    self.tier = ""
    self.spec_base: dict = {}
    self.pidns_fd = -1
    self.cg: cgroups.MemoryCgroups | None = None
    self.cg_reasons: list[str] = []
    self.landlock: isolation.LandlockView | None = None  # the seccomp tier's filesystem view
    self.work_root = sandbox_root  # where the seccomp tier's session directories live

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
        stack=int(cfg.stack_mb) << 20,
        display_last_expr=cfg.display_last_expr, seccomp=seccomp, block_signals=not root)

  def choose(self, probe: Callable[[], str | None], remove: Callable[[str], None]) -> dict:
    """Probes the strongest isolation that works here (`probe`: spawn one session with the
    current tier; None if it came up, else the error); returns the report for the host.
    `remove` deletes what killed zygotes left behind."""
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
        self._prepare_fallback(remove)
      self.tier, self.spec_base = tier, self._spec(tier)
      if tier == "namespaces":
        try:
          self._prepare_namespaces()
        except OSError as e:
          errors[tier] = str(e)
          self.tier = ""
          continue
      err = probe()
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

  def _prepare_fallback(self, remove: Callable[[str], None]) -> None:
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
      self._sweep_stale_work_roots(remove)
      d = f"/dev/shm/aci_sandbox_{os.getpid()}_{os.urandom(4).hex()}"
      try:
        os.mkdir(d, 0o711)
        os.chmod(d, 0o711)
        self.work_root = d
      except OSError:
        pass

  def _sweep_stale_work_roots(self, remove: Callable[[str], None]) -> None:
    """Directories of zygotes that were killed (a crashed server takes its zygote with it)."""
    for name in os.listdir("/dev/shm"):
      parts = name.split("_")
      if not name.startswith("aci_sandbox_") or len(parts) != 4 or not parts[2].isdigit():
        continue
      try:
        os.kill(int(parts[2]), 0)
        continue  # its zygote is alive
      except ProcessLookupError:
        remove(os.path.join("/dev/shm", name))
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
