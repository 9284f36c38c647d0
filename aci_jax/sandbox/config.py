"""Configuration, status categories and the result record shared by host and server (stdlib only)."""

from __future__ import annotations

import dataclasses
import enum
import os


class Status(str, enum.Enum):
  OK = "ok"
  ERROR = "error"                  # the cell raised (last traceback line is shown)
  TIMEOUT = "timeout"              # wall-clock (or CPU) limit; the session's process was killed
  MEMORY = "memory"                # MemoryError under RLIMIT_AS
  OUTPUT_LIMIT = "output_limit"    # more than max_output_bytes on stdout+stderr; killed
  KILLED = "killed"                # the process died without reporting (signal, os._exit, ...)
  SANDBOX_FAILURE = "sandbox_failure"  # our fault: server crashed, could not start a session


MODES = ("persistent", "replay", "isolated")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """All limits and display options. Units: seconds, MiB, bytes, characters."""
  mode: str = "persistent"          # persistent | replay | isolated
  timeout_s: float = 5.0            # wall clock per cell, enforced by the server; counted from
                                    # when the cell's process is ready, so a slow fork or setup
                                    # of a new session is never charged to the cell
  start_timeout_s: float = 60.0     # a new session's process must report ready within this, or
                                    # its cell ends as sandbox_failure (our fault, not the cell's)
  memory_mb: int = 4096             # per session: memory cgroup limit of all its processes
                                    # (where available) and RLIMIT_AS of each of them
  max_output_bytes: int = 16 << 20  # stdout+stderr bytes per cell before output_limit
  max_chars: int = 400              # display: longer text becomes first N/2 + "..." + last N/2
  max_workers: int = 0              # cells executing at once; 0 = os.cpu_count()
  max_pending: int = 4096           # submitted, unfinished cells before submit() blocks
  max_sessions: int = 1024          # live persistent processes; LRU idle ones are evicted
  max_code_bytes: int = 1 << 20     # longer cells are rejected as errors without running
  spares: int = 4                   # pre-forked idle processes, so a new session starts at once
  nproc: int = 64                   # RLIMIT_NPROC (processes + threads of the session uid)
  nofile: int = 256                 # RLIMIT_NOFILE
  stack_mb: int = 8                 # RLIMIT_STACK: fixed, so C-level recursion overflows the
                                    # same way whatever `ulimit -s` the host has (unlimited
                                    # would let it grow into the memory limit, slowly)
  file_mb: int = 64                 # RLIMIT_FSIZE, and the size of the private /tmp tmpfs
  cpu_s: float = 0.0                # RLIMIT_CPU per cell (soft); 0 = timeout_s + 1
  session_cpu_s: float = 0.0        # RLIMIT_CPU hard limit for a session; 0 = max(60, 20*timeout)
  uid_base: int = 2_000_000_000     # first uid of the per-session uid range (when root)
  isolation: str = "auto"           # auto | namespaces | seccomp
  allow_weak: bool = False          # permit running as non-root (shared uid; see docs)
  preload: tuple[str, ...] = ("math", "cmath", "fractions", "decimal", "itertools", "functools",
                              "collections", "random", "statistics", "re", "numpy", "sympy")
  warmup: bool = True               # exercise sympy once in the warm image (lazy imports)
  # Display (defaults follow the Qwen2.5-Math harness).
  display_last_expr: bool = True    # a trailing bare expression is shown as in a REPL (repr)
  stdout_on_error: bool = False     # harness shows only the error line when a cell fails
  strip: bool = True                # harness strips the text
  empty_text: str = "Done"          # what an error-free cell with no output shows (harness)
  timeout_text: str = "Timeout Error"  # harness text for a timeout
  persistent_recovery: bool = True  # rebuild a dead persistent session by replay of its ok cells

  def resolved(self) -> "SandboxConfig":
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.isolation not in ("auto", "namespaces", "seccomp"):
      raise ValueError(f"isolation must be auto|namespaces|seccomp, got {self.isolation!r}")
    if not (self.timeout_s > 0 and self.start_timeout_s > 0) or self.memory_mb < 64 or \
        self.max_chars < 2:
      raise ValueError("timeout_s and start_timeout_s must be > 0, memory_mb >= 64, "
                       "max_chars >= 2")
    if not 1 <= self.stack_mb < self.memory_mb:
      raise ValueError(f"stack_mb must be >= 1 and below memory_mb, got {self.stack_mb}")
    workers = self.max_workers or os.cpu_count() or 1
    cpu = self.cpu_s or self.timeout_s + 1.0
    session_cpu = self.session_cpu_s or max(60.0, 20.0 * self.timeout_s)
    return dataclasses.replace(self, max_workers=workers, cpu_s=cpu,
                               session_cpu_s=max(session_cpu, cpu))

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["preload"] = list(self.preload)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "SandboxConfig":
    d = dict(d)
    d["preload"] = tuple(d.get("preload", ()))
    return cls(**d)


@dataclasses.dataclass
class CellResult:
  """One executed cell. `output` is exactly the text to show the model."""
  session: object
  status: Status
  output: str
  seconds: float                    # wall time of execution in the sandbox
  latency: float = 0.0              # submit() to result, seconds (includes queueing)
  detail: str = ""                  # error line / reason, also for non-display use
  stdout_bytes: int = 0
  stderr_tail: str = ""             # last bytes of stderr, for debugging only

  @property
  def ok(self) -> bool:
    return self.status == Status.OK
