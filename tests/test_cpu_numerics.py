"""aci_jax keeps XLA's CPU float32 dots accurate (aci_jax/cpu_numerics.py)."""

import os
import subprocess
import sys

from aci_jax.cpu_numerics import FLAG, prefer_exact_cpu_dots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A float32 dot of K = 1536 N(0, 1) products checked against float64; NumPy's float32 matmul
# (OpenBLAS, an independent implementation) is the yardstick. XLA's Eigen dot lands at 0.7x of
# NumPy's max error here, the YNNPACK dot at 4.8x: 2x separates them with room on both sides.
_PROBE = """
import aci_jax, jax, jax.numpy as jnp, numpy as np
a = np.random.default_rng(0).standard_normal((64, 1536)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((1536, 576)).astype(np.float32)
ref = a.astype(np.float64) @ b.astype(np.float64)
ours = np.asarray(jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))(a, b), np.float64)
print(np.abs(ours - ref).max() / np.abs((a @ b).astype(np.float64) - ref).max())
"""


def test_float32_dot_error_like_an_independent_float32_matmul():
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  ratio = float(out.stdout.strip().splitlines()[-1])
  assert ratio <= 2.0, f"jax f32 dot error {ratio:.2f}x NumPy's float32 error"


def test_flag_appended_once_and_user_setting_wins():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  prefer_exact_cpu_dots(env)
  prefer_exact_cpu_dots(env)
  assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
  empty = {}
  prefer_exact_cpu_dots(empty)
  assert empty["XLA_FLAGS"] == FLAG
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  prefer_exact_cpu_dots(mine)
  assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
