"""Sandbox for model-written Python: warm server, per-session isolated processes, futures API.

Public API: Sandbox, SandboxConfig, CellResult, Status, SandboxUnavailable. See docs/sandbox.md.
"""

from aci_jax.sandbox.config import CellResult, SandboxConfig, Status

__all__ = ["Sandbox", "SandboxConfig", "CellResult", "Status", "SandboxUnavailable"]


def __getattr__(name):
  # The host API (threads, subprocess) loads lazily so the server/zygote image stays lean.
  if name in ("Sandbox", "SandboxUnavailable"):
    from aci_jax.sandbox import pool
    return getattr(pool, name)
  raise AttributeError(name)
