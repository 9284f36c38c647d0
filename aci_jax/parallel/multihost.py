"""Multi-host runs (one process per host): starting them, and host-side coordination.

`maybe_initialize_distributed` decides from the launch environment whether this is a multi-host
run and starts `jax.distributed` before any JAX computation (aci_jax/main.py calls it).

Compiled calls (decode, extend, a train step) are collectives: every process must issue the
same sequence with the same shapes. The host loops that drive them decide *locally* (which of
my rows paused, how long my tool output is) and agree through these small all-gathers before
each call. With one process every function is the identity and costs nothing.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Sequence

import jax
import numpy as np

from aci_jax.configuration import UsageError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- start


def _tpu_chips() -> int:
  """TPU chips attached to this host (read from /sys; no backend is initialised).

  JAX 0.10 has no public API for this before a backend exists (`jax.devices()` would start the
  TPU runtime, which must not happen before `jax.distributed.initialize`). The count comes from
  the helper JAX's own cluster detection uses, `jax._src.hardware_utils`, rather than a copy of
  its table of TPU PCI device ids, which grows with every TPU generation; if a JAX release moves
  it, this host counts as having no chips and only the environment variables below are read.
  """
  try:
    from jax._src import hardware_utils
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except (ImportError, AttributeError, OSError, ValueError):
    return 0
  return chips


def _gce_tpu_workers(timeout: float = 2.0) -> int:
  """Number of workers of the Cloud TPU VM slice this host belongs to; 0 when not on one.

  A TPU VM created with `gcloud compute tpus tpu-vm create` lists its slice's workers in the
  GCE metadata (`worker-network-endpoints`), not in the environment (TPU_WORKER_HOSTNAMES is a
  GKE variable); this is the list `jax.distributed.initialize()` itself reads there. Asked only
  when the host has TPU chips, so other machines never wait on the metadata server.
  """
  if not _tpu_chips() or os.environ.get("TPU_SKIP_MDS_QUERY"):
    return 0
  import urllib.request
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  req = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return len([w for w in r.read().decode().split(",") if w.strip()])
  except OSError:
    return 0


def _env_says_multihost() -> bool:
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice on GKE
    return True
  if _gce_tpu_workers() > 1:  # a multi-host Cloud TPU VM slice (gcloud ... --worker=all)
    return True
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(env.get(key, "1") or 1) > 1:
      return True
  return False


def maybe_initialize_distributed(dist) -> bool:
  """Calls `jax.distributed.initialize` for multi-host runs, before any JAX computation.

  dist.coordinator set: explicit (coordinator address, num_processes, process_id), e.g. for
  several local CPU processes. dist.multihost: "auto" (initialise when the environment shows a
  multi-host launch: a multi-host TPU slice (Cloud TPU VM metadata or GKE), SLURM, Open MPI,
  JAX_COORDINATOR_ADDRESS), "on" (always; JAX detects the cluster), "off".
  """
  if dist is None:
    return False
  mode = dist.get("multihost", "auto")
  if mode not in ("auto", "on", "off"):
    raise UsageError(f"config.dist.multihost must be auto|on|off, got {mode!r}")
  explicit = bool(dist.get("coordinator", ""))
  if not explicit and (mode == "off" or (mode == "auto" and not _env_says_multihost())):
    return False
  if dist.get("cpu_collectives", "") and (jax.config.jax_platforms or "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
  if explicit:
    jax.distributed.initialize(coordinator_address=dist.coordinator,
                               num_processes=int(dist.num_processes),
                               process_id=int(dist.process_id))
  else:
    jax.distributed.initialize()
  log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True


# ------------------------------------------------------------------------- coordination


def allgather_ints(values: Sequence[int]) -> np.ndarray:
  """[num_processes, len(values)] int64: every process's vector, in process order."""
  v = np.asarray(values, np.int64).reshape(-1)
  if jax.process_count() == 1:
    return v[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(v)).reshape(jax.process_count(), -1)


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's picklable `obj`, in process order (sizes may differ per process)."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  blob = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = allgather_ints([blob.size])[:, 0]
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  allb = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [pickle.loads(allb[i, :n].tobytes()) for i, n in enumerate(sizes)]


def owner_of(keys: Sequence[Any]) -> dict[Any, int]:
  """Deals distinct keys (e.g. query ids) round-robin over processes in order of first
  appearance, so every process computes the same assignment without talking."""
  out: dict[Any, int] = {}
  for k in keys:
    if k not in out:
      out[k] = len(out) % jax.process_count()
  return out


def addressable_rows(sharding, shape: tuple[int, ...], axis: int = 0) -> list[int]:
  """Indices along `axis` that this process holds of an array with `sharding`, sorted."""
  rows: set[int] = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    rows.update(range(*index[axis].indices(shape[axis])))
  return sorted(rows)


def host_local(x: jax.Array) -> np.ndarray:
  """`x` as numpy with this process's shards filled in and the rest zero (the whole array on
  one process). Each shard is transferred once even when it is replicated over devices."""
  if x.is_fully_addressable:
    return np.asarray(x)
  out = np.zeros(x.shape, x.dtype)
  seen = set()
  for s in x.addressable_shards:
    key = tuple((i.start, i.stop) for i in s.index)
    if key not in seen:
      seen.add(key)
      out[s.index] = np.asarray(s.data)
  return out


def global_from_host(x: np.ndarray, sharding) -> jax.Array:
  """A global array with `sharding` from a host array in which this process has filled (at
  least) the parts it holds; the parts of other processes are never read."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
