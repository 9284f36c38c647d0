"""The TPU chips the planner knows (public figures) and the abstract devices of a topology."""

from __future__ import annotations

import dataclasses
import re


class PlanError(ValueError):
  """Bad input to the planner (one line for the user)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Public per-chip figures (Cloud TPU system architecture pages)."""

  name: str
  hbm_bytes: float  # HBM capacity
  hbm_bw: float  # bytes/s
  bf16_flops: float  # peak dense bf16 FLOP/s
  ici_bw: float  # bytes/s of inter-chip interconnect per chip (all links, one direction)


GiB = 1024 ** 3
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 1.2e12, 275e12, 2400e9 / 8),
    "v5e": Chip("TPU v5e", 16 * GiB, 0.819e12, 197e12, 1600e9 / 8),
    "v5p": Chip("TPU v5p", 95 * GiB, 2.765e12, 459e12, 4800e9 / 8),
    "v6e": Chip("TPU v6e", 32 * GiB, 1.64e12, 918e12, 3584e9 / 8),
}


def chip_for(topology: str) -> Chip:
  gen = topology.split(":")[0]
  if gen not in CHIPS:
    raise PlanError(f"unknown TPU generation {gen!r} in --topology {topology!r}; known: "
                    f"{', '.join(CHIPS)} (e.g. v5p:2x2x2, v5e:4x4, v4:2x2x4)")
  return CHIPS[gen]


def topology_devices(topology: str):
  """Abstract devices, one per chip, of a topology named `<gen>:<AxB[xC]>`."""
  chip_for(topology)
  if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+){1,2}", topology):
    raise PlanError(f"--topology must look like v5e:4x4 or v5p:2x2x2, got {topology!r}")
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - jax always ships it
    raise PlanError(f"jax.experimental.topologies unavailable: {e}") from None
  kw = {"chip_config_name": "megacore"} if topology.startswith("v4:") else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
  except Exception as e:  # noqa: BLE001 - libtpu missing or an unknown shape
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise PlanError(f"cannot build TPU topology {topology!r} (is libtpu installed? "
                    f"pip install 'jax[tpu]'): {msg}") from None
  return list(desc.devices)

