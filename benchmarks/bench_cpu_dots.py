"""XLA CPU float32 dots: aci_jax's setting (YNNPACK fusion off) against jaxlib's default.

    python benchmarks/bench_cpu_dots.py [--threads 2]

For each shape (the SmolLM2-135M / toy projections at decode and training sizes) runs one
subprocess per setting (XLA reads XLA_FLAGS once per process) and prints GFLOP/s at
precision="highest" and the max error against a float64 product, as a ratio to NumPy's float32
matmul on the same operands. aci_jax/cpu_numerics.py says why the default is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SHAPES = [(1, 576, 1536), (8, 576, 1536), (8, 576, 49152), (256, 576, 1536), (2048, 1536, 576)]

_CHILD = r"""
import json, sys, time
import numpy as np, jax, jax.numpy as jnp
out = []
for m, k, n in json.loads(sys.argv[1]):
  rng = np.random.default_rng(0)
  a = rng.standard_normal((m, k)).astype(np.float32); b = rng.standard_normal((k, n)).astype(np.float32)
  f = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
  y = np.asarray(f(a, b), np.float64)
  ref = a.astype(np.float64) @ b.astype(np.float64)
  err = np.abs(y - ref).max() / np.abs((a @ b).astype(np.float64) - ref).max()
  da, db = jnp.asarray(a), jnp.asarray(b)
  reps = max(3, int(3e9 / (2 * m * k * n)))
  f(da, db).block_until_ready(); t = time.perf_counter()
  for _ in range(reps): f(da, db).block_until_ready()
  out.append([m, k, n, 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9, err])
print(json.dumps(out))
"""


def run(ynn_default: bool, threads: int) -> list:
  flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
  if not ynn_default:
    flags += " --xla_cpu_experimental_ynn_fusion_type="
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags,
         "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
  # The child does not import aci_jax, so XLA_FLAGS is exactly what is set here.
  p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(SHAPES)], env=env,
                     capture_output=True, text=True, check=True)
  return json.loads(p.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  ours, default = run(False, args.threads), run(True, args.threads)
  print(f"{'shape (m, k, n)':<22}{'ours GF/s':>10}{'default GF/s':>14}{'speed ratio':>13}"
        f"{'ours err':>10}{'default err':>13}   (err: max |error| / NumPy float32's)")
  for o, d in zip(ours, default):
    print(f"{str(tuple(o[:3])):<22}{o[3]:>10.1f}{d[3]:>14.1f}{o[3] / d[3]:>13.2f}"
          f"{o[4]:>10.2f}{d[4]:>13.2f}")


if __name__ == "__main__":
  main()
