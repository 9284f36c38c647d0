"""Compile Qwen2.5-7B-sized attention (forward + backward of a training chunk, and a prompt
extend over the KV cache) for a TPU topology on this host (libtpu's compiler, no TPU needed)
and report per path: the largest temporary buffers, whether any [T, S]-shaped score buffer
remains, and the compiler's memory analysis.

  python benchmarks/attention_tpu_compile.py --topology v5e:2x2

Paths: `dense` (the whole score tensor), `blocked` (pure-JAX online softmax), `auto` (what the
decoder gets: on TPU the Pallas splash kernel, the blocked path as its on-device fallback),
`chunk` (`auto` with `chunk_only=True`, the cache-free caller's promise: no fallback compiled;
training only, since an extend is never chunk-only).
The training call runs under `activation_sharding` like the train step, the extend call under
`attention.kernel_mesh` (the sampler's opt-in): either way the kernel runs in a shard_map over
batch and heads.
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aci_jax.model import attention as A
from aci_jax.parallel import activation_sharding
from aci_jax.parallel.mesh import AXES
from aci_jax.plan.chips import topology_devices

GiB = 2 ** 30


def _shapes(text: str, t: int, s: int) -> list[str]:
  """Shapes in the optimised HLO whose last two dims are [t, s] (a score-sized buffer)."""
  return sorted(set(re.findall(rf"\b(?:f32|bf16)\[[0-9,]*{t},{s}\]", text)))


def compile_one(fn, args, shardings):
  jitted = jax.jit(fn, in_shardings=shardings)
  return jitted.lower(*args).compile()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--topology", default="v5e:2x2")
  ap.add_argument("--tensor", type=int, default=2)
  ap.add_argument("--rows", type=int, default=4, help="training rows per chip")
  ap.add_argument("--length", type=int, default=4096)
  ap.add_argument("--cache", type=int, default=4096, help="extend: KV slots")
  ap.add_argument("--chunk", type=int, default=1024, help="extend: prompt chunk")
  ap.add_argument("--extend-rows", type=int, default=16, help="extend rows per chip")
  ap.add_argument("--paths", default="dense,blocked,auto,chunk")
  a = ap.parse_args()
  devices = topology_devices(a.topology)
  n = len(devices)
  mesh = Mesh(np.asarray(devices).reshape(1, n // a.tensor, a.tensor), AXES)
  h, kh, dh = 28, 4, 128  # Qwen2.5-7B
  dt = jnp.bfloat16
  rows = NamedSharding(mesh, P(("data", "fsdp"), None))
  heads = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  print(f"jax {jax.__version__}, {a.topology} ({n} chips), mesh data=1 fsdp={n // a.tensor} "
        f"tensor={a.tensor}; Qwen2.5-7B attention H={h} K={kh} Dh={dh}, bf16")

  b, t = a.rows * n, a.length
  train = (jax.ShapeDtypeStruct((b, t, h, dh), dt), jax.ShapeDtypeStruct((b, t, kh, dh), dt),
           jax.ShapeDtypeStruct((b, t, kh, dh), dt), jax.ShapeDtypeStruct((b, t), jnp.int32),
           jax.ShapeDtypeStruct((b, t), jnp.bool_), jax.ShapeDtypeStruct((b, t), jnp.int32))
  train_sh = (heads, heads, heads, rows, rows, rows)
  be, tc, s = a.extend_rows * n, a.chunk, a.cache
  ext = (jax.ShapeDtypeStruct((be, tc, h, dh), dt), jax.ShapeDtypeStruct((be, s, kh, dh), dt),
         jax.ShapeDtypeStruct((be, s, kh, dh), dt), jax.ShapeDtypeStruct((be, tc), jnp.int32),
         jax.ShapeDtypeStruct((be, s), jnp.bool_))
  ext_sh = (heads, heads, heads, rows, rows)

  for path in a.paths.split(","):
    impl, chunk_only = ("auto", True) if path == "chunk" else (path, False)

    def train_step(q, k, v, slot, valid, seg, impl=impl, chunk_only=chunk_only):
      def loss(q, k, v):
        out = A.attention(q, k, v, slot, valid, seg, seg, impl=impl, chunk_only=chunk_only)
        return jnp.sum(out.astype(jnp.float32) ** 2)
      with activation_sharding(mesh):
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    def extend(q, k, v, slot, valid, impl=impl):
      with A.kernel_mesh(mesh):
        return A.attention(q, k, v, slot, valid, impl=impl)

    calls = [("train fwd+bwd", train_step, train, train_sh, (t, t))]
    if not chunk_only:
      calls.append(("extend", extend, ext, ext_sh, (tc, s)))
    for name, fn, args, sh, (tq, sk) in calls:
      try:
        c = compile_one(fn, args, sh)
      except Exception as e:  # noqa: BLE001 - report the compiler's reason and go on
        print(f"{path:8s} {name:14s} FAILED: {str(e).splitlines()[0][:300]}")
        continue
      m = c.memory_analysis()
      text = c.as_text()
      scores = _shapes(text, tq, sk)
      kernels = text.count('custom_call_target="tpu_custom_call"')
      print(f"{path:8s} {name:14s} temp {m.temp_size_in_bytes / GiB:7.2f} GiB  args "
            f"{m.argument_size_in_bytes / GiB:6.2f} GiB  Pallas calls {kernels:2d}  "
            f"[T,S] buffers: {', '.join(scores) if scores else 'none'}")


if __name__ == "__main__":
  main()
