"""Host-side coordination between the processes of a multi-host run (one process per host).

Compiled calls (decode, extend, a train step) are collectives: every process must issue the same
sequence with the same shapes. The host loops that drive them decide *locally* (which of my rows
paused, how long my tool output is) and agree through these small all-gathers before each call.
With one process every function is the identity and costs nothing.
"""

from __future__ import annotations

import pickle
from typing import Any, Sequence

import jax
import numpy as np


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
