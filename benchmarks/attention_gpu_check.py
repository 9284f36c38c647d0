"""GPU check of the cuDNN attention path (aci_jax/model/kernels/cudnn.py); needs a CUDA GPU and
jax[cuda]. Prepared for a session that is lent one; about a minute on one H100/H200.

  python benchmarks/attention_gpu_check.py

1. The compiled program of `attention(..., impl="auto")` on a bf16 training chunk holds a
   cuDNN fused-attention call (`__cudnn$fmha...`) and no [T, S] buffer.
2. Values and gradients against the blocked path (bf16 inputs, both computed in float32
   softmax; bf16 tolerance 2e-2 on O(1) outputs) and against a float32 dense reference.
3. Inputs cuDNN's masks cannot express (holes, packing, an extend) run the blocked fallback
   and still agree with dense.
4. Forward+backward time of cudnn vs blocked at Qwen2.5-1.5B attention shapes (H=12, K=2,
   Dh=128), T=2048, 4 rows.
Exit status 1 if a check fails.
"""

from __future__ import annotations

import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import attention as A


def _inputs(rng, b, t, h, kh, dh, dtype):
  q = jnp.asarray(rng.standard_normal((b, t, h, dh)), dtype)
  k = jnp.asarray(rng.standard_normal((b, t, kh, dh)), dtype)
  v = jnp.asarray(rng.standard_normal((b, t, kh, dh)), dtype)
  lengths = np.array([t] + [t - 97 * (i + 1) for i in range(b - 1)])
  valid = jnp.asarray(np.arange(t)[None] < lengths[:, None])
  slot = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  return q, k, v, slot, valid


def _grads(impl, args, w):
  q, k, v, slot, valid = args
  loss = lambda q, k, v: jnp.sum(A.attention(q, k, v, slot, valid, impl=impl)
                                 .astype(jnp.float32) * w)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _time(fn, *args, n=10):
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(n):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n


def main() -> int:
  if jax.default_backend() != "gpu":
    print(f"needs a GPU backend, got {jax.default_backend()}")
    return 1
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
  ok = True
  rng = np.random.default_rng(0)
  b, t, h, kh, dh = 4, 2048, 12, 2, 128
  args = _inputs(rng, b, t, h, kh, dh, jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((b, t, h, dh)), jnp.float32)

  fwd = jax.jit(lambda *a: A.attention(*a))
  text = fwd.lower(*args).compile().as_text()
  fused = bool(re.search(r"__cudnn\$fmha", text))
  scores = re.findall(rf"\[[0-9,]*{t},{t}\]", text)
  print(f"1. cuDNN fused attention in the program: {fused}; [T, S] buffers: {scores or 'none'}")
  ok &= fused and not scores

  (lc, gc), (lb, gb) = _grads("cudnn", args, w)(*args[:3]), _grads("blocked", args, w)(*args[:3])
  out_c = fwd(*args).astype(jnp.float32)
  out_b = A.attention(*args, impl="blocked").astype(jnp.float32)
  f32 = tuple(x.astype(jnp.float32) for x in args[:3]) + args[3:]
  out_ref = A.dense_attention(*f32)
  err_b = float(jnp.max(jnp.abs(out_c - out_b)))
  err_r = float(jnp.max(jnp.abs(out_c - out_ref)))
  err_g = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - c.astype(jnp.float32))))
              / max(float(jnp.max(jnp.abs(c.astype(jnp.float32)))), 1e-6) for a, c in zip(gc, gb))
  print(f"2. cudnn vs blocked {err_b:.2e}, vs float32 dense {err_r:.2e}; gradients rel "
        f"{err_g:.2e}; loss {float(lc):.4f} vs {float(lb):.4f}")
  ok &= err_b < 2e-2 and err_r < 2e-2 and err_g < 2e-2

  q, k, v, slot, valid = args
  holes = valid.at[:, 5].set(False)
  seg = jnp.asarray(np.repeat(np.arange(t)[None] // 700, b, 0), jnp.int32)
  for name, a in (("holes", (q, k, v, slot, holes, None, None)),
                  ("packing", (q, k, v, slot, valid, seg, seg))):
    got = jax.jit(lambda *a: A.attention(*a, impl="cudnn"))(*a).astype(jnp.float32)
    want = A.dense_attention(*(x.astype(jnp.float32) if x is not None and x.dtype == jnp.bfloat16
                               else x for x in a))
    live = np.asarray(A._mask(a[3], a[5], a[4], a[6], jnp.arange(t)).any(-1))
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))[live]))
    print(f"3. {name}: fallback vs dense {err:.2e}")
    ok &= err < 2e-2

  tc = _time(_grads("cudnn", args, w), *args[:3])
  tb = _time(_grads("blocked", args, w), *args[:3])
  print(f"4. fwd+bwd, {b}x{t} tokens, H={h} K={kh} Dh={dh} bf16: cudnn {tc * 1e3:.2f} ms, "
        f"blocked {tb * 1e3:.2f} ms ({tb / tc:.1f}x)")
  print("PASS" if ok else "FAIL")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
