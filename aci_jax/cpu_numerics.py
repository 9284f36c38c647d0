"""Float32 dots on XLA's CPU backend as accurate as float32 allows.

jaxlib 0.10's CPU backend hands dot products (and fusions around them) to YNNPACK by default.
Its float32 dot loses precision: a [64, 1536] x [1536, 576] product of N(0, 1) entries at
`precision="highest"` is off the float64 result by 3.6e-4, against 5.2e-5 for XLA's own
(Eigen) dot and 7.5e-5 for NumPy's float32 matmul. Through a 30-layer model that is 2x the
logit error of transformers' float32 forward on average and 9x on tokens where the residual
stream cancels (SmolLM2-135M, `python -m aci_jax.verify_checkpoint`). The Eigen path is
1.1-1.2x faster on decode-sized dots and 0.73x on a [2048, 1536] x [1536, 576] one, with no
loss on a whole train step (benchmarks/bench_cpu_dots.py, docs/benchmarks.md), so every
aci_jax process turns the YNNPACK fusion off before a JAX backend starts.

XLA reads XLA_FLAGS once, when the first backend starts: importing aci_jax after JAX has run a
computation leaves the process as it is. A user who sets the flag themselves wins.
"""

import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def prefer_exact_cpu_dots(environ=os.environ) -> None:
  """Appends FLAG to XLA_FLAGS unless the YNNPACK fusion flag is already there."""
  flags = environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
