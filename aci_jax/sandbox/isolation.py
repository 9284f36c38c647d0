"""Linux isolation primitives for sandbox children, via ctypes (stdlib only).

Everything here runs inside a freshly forked session child before any model-written code; it
raises OSError on failure so the caller can report which layer is unavailable.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
            | CLONE_NEWPID | CLONE_NEWNET)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1

PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 38, 22
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2


def _check(ret: int, what: str) -> int:
  if ret < 0 or ret == -1:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")
  return ret


def unshare(flags: int) -> None:
  _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
  _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()
  _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
         f"mount {target}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
  return _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                            ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


def pivot_root(new_root: str, put_old: str) -> None:
  _check(_libc.syscall(ctypes.c_long(_PIVOT_ROOT[platform.machine()]), new_root.encode(),
                       put_old.encode()), "pivot_root")


def umount2(target: str, flags: int) -> None:
  _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


class _MountAttr(ctypes.Structure):
  _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
              ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_tree_readonly(path: str = "/") -> None:
  """Every mount at or below `path` becomes read-only (in the caller's mount namespace)."""
  attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
  ret = _libc.syscall(ctypes.c_long(442), ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr)))
  if ret == 0:
    return
  if ctypes.get_errno() != 38:  # ENOSYS: kernel < 5.12, fall back to one remount per mount
    _check(-1, "mount_setattr")
  with open("/proc/self/mountinfo") as f:
    points = [line.split()[4] for line in f]
  for p in sorted(set(points), key=len):
    if p == path or p.startswith(path.rstrip("/") + "/"):
      try:
        mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
      except OSError:
        pass  # mounts that cannot be remounted (e.g. locked) stay as they are


def set_rlimits(*, address_space: int, cpu_soft: int, cpu_hard: int, nproc: int, fsize: int,
                nofile: int, stack: int) -> None:
  """Limits in bytes / CPU seconds / counts; applied to this process and inherited by children."""
  for res, soft, hard in ((resource.RLIMIT_AS, address_space, address_space),
                          (resource.RLIMIT_CPU, cpu_soft, cpu_hard),
                          (resource.RLIMIT_NPROC, nproc, nproc),
                          (resource.RLIMIT_FSIZE, fsize, fsize),
                          (resource.RLIMIT_NOFILE, nofile, nofile),
                          (resource.RLIMIT_STACK, stack, stack),
                          (resource.RLIMIT_CORE, 0, 0)):
    resource.setrlimit(res, (soft, hard))


# --- seccomp-BPF ------------------------------------------------------------------------------
# Syscall numbers: x86_64 from asm/unistd_64.h, aarch64 from asm-generic/unistd.h.
_SYSCALLS = {
    "x86_64": dict(
        arch=0xC000003E, socket=41, setsid=112, setpgid=109, clone=56, clone3=435, prctl=157,
        kill=62, tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297,
        pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
        memfd_create=319, flock=73, fcntl=72, inotify=[253, 294, 300], timer_create=222,
        sysv_ipc=[29, 64, 68], memfd_secret=447,
        deny=[101, 310, 311, 246, 320, 321, 298, 323, 250, 248, 249, 165, 166, 155, 272, 308, 442,
              428, 429, 430, 431, 432, 433, 167, 168, 169, 175, 313, 176, 172, 173, 163, 164, 227,
              305, 159, 179, 303, 304, 425, 426, 427, 161, 135, 212, 103, 153, 134, 170, 171]),
    "aarch64": dict(
        arch=0xC00000B7, socket=198, setsid=157, setpgid=154, clone=220, clone3=435, prctl=167,
        kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240,
        pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438,
        memfd_create=279, flock=32, fcntl=25, inotify=[26, 262], timer_create=107,
        sysv_ipc=[194, 190, 186], memfd_secret=447,
        deny=[117, 270, 271, 104, 294, 280, 241, 282, 219, 217, 218, 40, 39, 41, 97, 268, 442, 428,
              429, 430, 431, 432, 433, 224, 225, 142, 105, 273, 106, 89, 170, 112, 266, 171, 60,
              264, 265, 425, 426, 427, 51, 92, 18, 116, 58, 161, 162]),
}
# The deny lists: ptrace, process_vm_{readv,writev}, kexec, bpf, perf_event_open, userfaultfd,
# keyrings, every mount/namespace call, swap, reboot, modules, raw I/O ports, accounting, clocks,
# quotas, file handles, io_uring (its operations bypass seccomp), chroot, personality,
# lookup_dcookie, syslog, vhangup, uselib, host/domain names.
# inotify/fanotify: sessions share the read-only library tree, so a watch there would show other
# sessions' (and the host's) file accesses. File locks (flock, fcntl record and OFD locks) are
# kept per inode, bind mounts or not, so a lock on a shared library file would be a channel
# between sessions and to the host: they fail with ENOLCK, as on a filesystem without locks.
# timer_create: a POSIX timer is invisible to the runner (it resets the itimers after each cell)
# and would let a signal handler run between cells.
_LOCK_CMDS = (5, 6, 7, 36, 37, 38)  # F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK/SETLK/SETLKW

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
EPERM, ENOSYS, ENOLCK = 1, 38, 37
_LD_W_ABS, _JEQ_K, _JSET_K, _JGE_K, _RET_K = 0x20, 0x15, 0x45, 0x35, 0x06


def seccomp_supported() -> bool:
  return platform.machine() in _SYSCALLS


def build_filter(*, block_sockets: bool, block_setsid: bool,
                 block_signals_except: int | None, block_memfd: bool = False,
                 block_sysv_ipc: bool = False) -> bytes:
  """A classic-BPF seccomp program (packed sock_filter array).

  Always: non-native ABIs are killed, the deny list returns EPERM, namespace-creating clone()
  flags return EPERM, clone3 returns ENOSYS (so libc falls back to clone), prctl(PR_SET_PDEATHSIG)
  returns EPERM (the child must die with its parent).
  block_sockets: socket() of any family returns EPERM (network fallback when no netns).
  block_setsid: setsid()/setpgid() return EPERM, so a process-group kill reaches every
    descendant (used when there is no PID namespace).
  block_signals_except: if a pid is given, kill()/tgkill() etc. may only target that pid, its
    process group or 0 (used when sessions share a uid with the host).
  block_memfd: memfd_create returns EPERM (used when no memory cgroup counts memfd pages).
  block_sysv_ipc: shmget/semget/msgget return EPERM (used without an IPC namespace, where
    System V objects would outlive the session on the host).
  Always also: inotify/fanotify return EPERM, file locks ENOLCK, timer_create EPERM,
  memfd_secret EPERM (see the comments above).
  """
  t = _SYSCALLS[platform.machine()]
  prog: list[tuple[int, int, int, int]] = []
  ins = lambda code, jt, jf, k: prog.append((code, jt, jf, k & 0xFFFFFFFF))
  errno = lambda e: _RET_ERRNO | e
  # Each rule: (syscall nr, list of instructions run with A = nr already matched).
  rules: list[tuple[int, list[tuple[int, int, int, int]]]] = []
  deny = lambda e=EPERM: [(_RET_K, 0, 0, errno(e))]
  for nr in t["deny"] + t["inotify"] + [t["timer_create"], t["memfd_secret"]]:
    rules.append((nr, deny()))
  rules.append((t["flock"], deny(ENOLCK)))
  lock = [(_LD_W_ABS, 0, 0, 24)]
  for i, cmd in enumerate(_LOCK_CMDS):
    lock.append((_JEQ_K, len(_LOCK_CMDS) - i, 0, cmd))
  lock += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, errno(ENOLCK))]
  rules.append((t["fcntl"], lock))
  if block_memfd:
    rules.append((t["memfd_create"], deny()))
  if block_sysv_ipc:
    for nr in t["sysv_ipc"]:
      rules.append((nr, deny()))
  rules.append((t["clone3"], deny(ENOSYS)))
  rules.append((t["clone"], [(_LD_W_ABS, 0, 0, 16), (_JSET_K, 0, 1, NS_FLAGS),
                             (_RET_K, 0, 0, errno(EPERM)), (_RET_K, 0, 0, _RET_ALLOW)]))
  rules.append((t["prctl"], [(_LD_W_ABS, 0, 0, 16), (_JEQ_K, 0, 1, PR_SET_PDEATHSIG),
                             (_RET_K, 0, 0, errno(EPERM)), (_RET_K, 0, 0, _RET_ALLOW)]))
  if block_sockets:
    rules.append((t["socket"], deny()))
  if block_setsid:
    rules.append((t["setsid"], deny()))
    rules.append((t["setpgid"], deny()))
  if block_signals_except is not None:
    pid = block_signals_except
    ok_pid = [(_LD_W_ABS, 0, 0, 16), (_JEQ_K, 3, 0, 0), (_JEQ_K, 2, 0, pid),
              (_JEQ_K, 1, 0, (-pid) & 0xFFFFFFFF), (_RET_K, 0, 0, errno(EPERM)),
              (_RET_K, 0, 0, _RET_ALLOW)]
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
      rules.append((t[name], ok_pid))
    for name in ("tkill", "pidfd_send_signal", "pidfd_open", "pidfd_getfd"):
      rules.append((t[name], deny()))
  # Header: arch check, x32 check, then a linear chain of "if nr == X: run rule".
  ins(_LD_W_ABS, 0, 0, 4)
  ins(_JEQ_K, 1, 0, t["arch"])
  ins(_RET_K, 0, 0, _RET_KILL_PROCESS)
  ins(_LD_W_ABS, 0, 0, 0)
  if platform.machine() == "x86_64":
    ins(_JGE_K, 0, 1, 0x40000000)
    ins(_RET_K, 0, 0, errno(EPERM))
  for nr, body in rules:
    ins(_JEQ_K, 0, len(body), nr)
    for code, jt, jf, k in body:
      ins(code, jt, jf, k)
    # Bodies end in RET, except the arg-inspecting ones which also end in RET; A is clobbered
    # by the loads inside them, so reload nr for the next comparison.
    ins(_LD_W_ABS, 0, 0, 0)
  ins(_RET_K, 0, 0, _RET_ALLOW)
  return b"".join(struct.pack("HBBI", *p) for p in prog)


class _SockFprog(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes) -> None:
  """Installs a seccomp filter on this (single-threaded) process; requires NO_NEW_PRIVS."""
  buf = ctypes.create_string_buffer(program, len(program))
  fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
  prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


# --- Landlock (the seccomp tier's filesystem view) --------------------------------------------
# Unprivileged path-based access control (Linux >= 5.13): a session of the seccomp tier gets
# read access to what Python needs, read-write access to its own directory and a few device
# nodes, and nothing else: no other host file, no /dev/ptmx, no other process's /proc entry.
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446  # same numbers on x86_64 and aarch64
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_TRUNCATE, LL_IOCTL_DEV = 1 << 14, 1 << 15
LL_FILE_RIGHTS = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV


def landlock_abi() -> int:
  """The kernel's Landlock ABI version, 0 if Landlock is unavailable."""
  ret = _libc.syscall(ctypes.c_long(_LL_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
  return max(0, ret)


def landlock_handled(abi: int) -> int:
  """Every filesystem right the ABI knows (all of them are denied unless a rule allows)."""
  rights = (1 << 13) - 1          # v1: execute ... make_sym
  if abi >= 2:
    rights |= 1 << 13             # refer (rename/link across directories)
  if abi >= 3:
    rights |= LL_TRUNCATE
  if abi >= 5:
    rights |= LL_IOCTL_DEV
  return rights


class _RulesetAttr(ctypes.Structure):
  _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
  _pack_ = 1
  _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_ruleset(handled: int) -> int:
  attr = _RulesetAttr(handled)
  return _check(_libc.syscall(ctypes.c_long(_LL_CREATE), ctypes.byref(attr),
                              ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0)),
                "landlock_create_ruleset")


def landlock_allow(ruleset_fd: int, path_fd: int, access: int) -> None:
  """Allows `access` beneath the file or directory open as path_fd (O_PATH is enough)."""
  rule = _PathBeneath(access, path_fd)
  _check(_libc.syscall(ctypes.c_long(_LL_ADD_RULE), ctypes.c_int(ruleset_fd), ctypes.c_int(1),
                       ctypes.byref(rule), ctypes.c_uint32(0)), "landlock_add_rule")


def landlock_restrict(ruleset_fd: int) -> None:
  """Enforces the ruleset on this process and every child it will have (needs NO_NEW_PRIVS)."""
  _check(_libc.syscall(ctypes.c_long(_LL_RESTRICT), ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)),
         "landlock_restrict_self")


class LandlockView:
  """Built once in the zygote: descriptors on what every session may read. ruleset(workdir)
  makes a session's own ruleset (its directory read-write) before the fork."""

  DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

  def __init__(self, abi: int, read_paths: list[str]):
    self.abi = abi
    self.handled = landlock_handled(abi)
    self.rules: list[tuple[int, int]] = []
    dev_rights = (LL_READ_FILE | LL_WRITE_FILE | LL_TRUNCATE | LL_IOCTL_DEV) & self.handled
    for p, rights in [(p, LL_EXECUTE | LL_READ_FILE | LL_READ_DIR) for p in read_paths] + \
                     [(d, dev_rights) for d in self.DEVICES]:
      try:
        fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
      except OSError:
        continue
      if not os.path.isdir(p):
        rights &= LL_FILE_RIGHTS
      self.rules.append((fd, rights & self.handled))

  def ruleset(self, workdir: str) -> int:
    fd = landlock_ruleset(self.handled)
    try:
      for path_fd, rights in self.rules:
        landlock_allow(fd, path_fd, rights)
      wd = os.open(workdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
      try:
        landlock_allow(fd, wd, self.handled)
      finally:
        os.close(wd)
    except OSError:
      os.close(fd)
      raise
    return fd
