"""Checks that a Hugging Face checkpoint computes the same function in aci_jax as in `transformers`.

    python -m aci_jax.verify_checkpoint DIR [--dtype float32|bfloat16] [--batch 2]
        [--length 16] [--seed 0] [--left-pad 3]

Loads DIR into our Flax decoder and into `transformers` (PyTorch, CPU, eager attention), runs
both on the same random token batch (the second row left-padded) and compares each with a
float64 reference. Exit 0: OK; 1: the check failed; 2: bad input or missing dependency.

Why relative to a float64 reference, not a fixed logit tolerance: a real checkpoint's float32
logits are not reproducible to 1e-4 by *any* float32 implementation. SmolLM2-135M, for one, has
a massive activation (layer 11's MLP writes ~2.4e4 into one channel of the first token), so
float32 rounding alone moves logits by ~1e-4..1e-3, and the summation order of XLA's CPU
matmuls differs from torch's. So the question asked is: is our error against the true (float64)
function of the same order as transformers' own error in the same dtype? A wrong
implementation (a transposed, scaled, or misnamed tensor; a RoPE layout bug) is off by orders of
magnitude more than rounding.

The float64 reference is the `transformers` model loaded in float64 with its three float32
casts removed (HF's Llama/Qwen2 compute RMSNorm statistics, RoPE tables and the attention
softmax in float32 even in a float64 model, which would make it a float32 reference). The RoPE
inverse frequencies are recomputed in float64 for default RoPE (for scaled RoPE, HF's float32
table is used, a relative error of 6e-8 in the frequencies).

Criteria (stated in the output):
  float32 (our matmuls at "highest" precision on every backend: on TPU the default runs float32
  matmuls as bf16 passes, which would not be a float32 check):
    rms(ours - ref64) <= F32_RMS_RATIO * rms(hf32 - ref64) + floor   and
    max|ours - ref64| <= F32_MAX_RATIO * max|hf32 - ref64| + floor,
    floor = 8 * eps32 * max|ref64| (for tiny models whose float32 error is ~0).
  bfloat16 (per-position distributions; bf16 logits differ by O(0.1-1) from any reference):
    mean KL(p_ref64 || p_ours) <= BF16_KL_RATIO * mean KL(p_ref64 || p_hf_bf16) + BF16_KL_FLOOR
    and top-1 agreement with ref64 >= that of transformers in bfloat16 - BF16_TOP1_SLACK.
The ratios are set from measurements on SmolLM2-135M-Instruct (docs/real_model.md: 9 batches,
2x16 to 8x32 tokens, seeds 0-2): a correct implementation measured max ratios 0.85-3.3, rms
ratios 1.1-2.1, bf16 KL ratios 0.78-1.04 and top-1 within 2 positions of transformers'. A
broken one is far outside: a 1% scale on one layer's norm gives float32 ratios ~2,300 (rms) and
one transposed q projection ~180,000 (and bf16 KL 0.39 nats vs 0.003). The bf16 check cannot
see errors below bf16 resolution (that 1% scale passes it): correctness is the float32 check's
job, the bf16 check says our bf16 numerics are as good as transformers'.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np

F32_RMS_RATIO = 4.0
F32_MAX_RATIO = 6.0
BF16_KL_RATIO = 2.0
BF16_KL_FLOOR = 1e-4  # nats: below this two distributions are the same for any sampling use
BF16_TOP1_SLACK = 0.05


def _need_torch():
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:  # torch is a test/verification dependency only
    print(f"error: verify_checkpoint needs torch and transformers ({e}); install the CPU "
          "build: pip install torch==2.13.0 (or the test extra)", file=sys.stderr)
    raise SystemExit(2) from None


@contextlib.contextmanager
def _float64_softmax():
  """HF's eager attention calls softmax(..., dtype=float32); keep float64 inputs in float64."""
  import torch

  orig = torch.nn.functional.softmax

  def softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dtype is not None and x.dtype == torch.float64:
      dtype = None
    return orig(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

  torch.nn.functional.softmax = softmax
  try:
    yield
  finally:
    torch.nn.functional.softmax = orig


def make_float64(model):
  """Removes the float32 casts of HF's RMSNorm and RoPE from a float64 model (in place).

  Softmax is handled at call time by `_float64_softmax`. Returns the model.
  """
  import types

  import torch

  def rms_forward(self, x):
    var = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))

  cfg = model.config
  params = getattr(cfg, "rope_parameters", None) or {}
  scaling = getattr(cfg, "rope_scaling", None) or {}
  rope_type = (scaling.get("rope_type") or scaling.get("type") or
               params.get("rope_type") or "default")
  theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
  head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

  def rope_forward(self, x, position_ids):
    if rope_type == "default":
      inv = 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.float64)
                                    / head_dim))
    else:
      inv = self.inv_freq.to(torch.float64)
    freqs = position_ids.to(torch.float64)[..., None] * inv[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = float(getattr(self, "attention_scaling", 1.0))
    return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

  n_norm = n_rope = 0
  for m in model.modules():
    name = type(m).__name__
    if name.endswith("RMSNorm") and hasattr(m, "variance_epsilon"):
      m.forward = types.MethodType(rms_forward, m)
      n_norm += 1
    elif name.endswith("RotaryEmbedding"):
      m.forward = types.MethodType(rope_forward, m)
      n_rope += 1
  if not n_norm or not n_rope:
    raise RuntimeError(f"float64 reference: found {n_norm} RMSNorm and {n_rope} rotary modules "
                       "in the transformers model; this transformers version is not supported")
  return model


def torch_logits(model, tokens, valid, positions) -> np.ndarray:
  import torch

  with torch.no_grad(), _float64_softmax():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(valid.astype(np.int64)),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.to(torch.float64).numpy()


def load_torch(directory: str, dtype: str):
  import torch
  from transformers import AutoModelForCausalLM

  td = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = AutoModelForCausalLM.from_pretrained(directory, dtype=td, attn_implementation="eager")
  model.eval()
  return make_float64(model) if dtype == "float64" else model


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_top1(ref: np.ndarray, x: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
  """(mean KL(softmax(ref) || softmax(x)), top-1 agreement) over the valid positions."""
  lr, lx = _log_softmax(ref[valid]), _log_softmax(x[valid].astype(np.float64))
  kl = float(np.mean(np.sum(np.exp(lr) * (lr - lx), axis=-1)))
  return kl, float(np.mean(ref[valid].argmax(-1) == x[valid].argmax(-1)))


def float32_verdict(ours, hf32, ref, valid) -> tuple[bool, str]:
  """The float32 criterion (module docstring) on logits [B, T, V]; (ok, report lines)."""
  d_o, d_h = (ours[valid] - ref[valid]), (hf32[valid] - ref[valid])
  rms_o, rms_h = float(np.sqrt(np.mean(d_o ** 2))), float(np.sqrt(np.mean(d_h ** 2)))
  max_o, max_h = float(np.max(np.abs(d_o))), float(np.max(np.abs(d_h)))
  floor = 8 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(ref[valid])))
  ok = (rms_o <= F32_RMS_RATIO * rms_h + floor) and (max_o <= F32_MAX_RATIO * max_h + floor)
  agree = float(np.mean((ours.argmax(-1) == ref.argmax(-1))[valid]))
  lines = [
      f"  ours (float32)          vs float64: max |logit diff| {max_o:.3e}, rms {rms_o:.3e}, "
      f"argmax agreement {agree:.2%}",
      f"  transformers (float32)  vs float64: max |logit diff| {max_h:.3e}, rms {rms_h:.3e}",
      f"  ratios ours/transformers: max {max_o / max(max_h, 1e-30):.2f}, "
      f"rms {rms_o / max(rms_h, 1e-30):.2f}",
      f"  criterion: rms <= {F32_RMS_RATIO:g} x and max <= {F32_MAX_RATIO:g} x transformers' "
      f"own float32 error, + floor 8*eps32*max|ref| = {floor:.1e}: {'OK' if ok else 'FAIL'}"]
  return ok, "\n".join(lines)


def bfloat16_verdict(ours, hfbf, ref, valid) -> tuple[bool, str]:
  kl_o, top_o = kl_top1(ref, ours, valid)
  kl_h, top_h = kl_top1(ref, hfbf, valid)
  ok = kl_o <= BF16_KL_RATIO * kl_h + BF16_KL_FLOOR and top_o >= top_h - BF16_TOP1_SLACK
  lines = [
      f"  ours (bfloat16)         vs float64: mean KL {kl_o:.3e} nats, top-1 agreement "
      f"{top_o:.2%}",
      f"  transformers (bfloat16) vs float64: mean KL {kl_h:.3e} nats, top-1 agreement "
      f"{top_h:.2%}",
      f"  criterion: KL <= {BF16_KL_RATIO:g} x transformers' bf16 KL + {BF16_KL_FLOOR:g}, "
      f"top-1 >= transformers' - {BF16_TOP1_SLACK:.0%}: {'OK' if ok else 'FAIL'}"]
  return ok, "\n".join(lines)


def our_logits(directory: str, dtype: str, tokens, valid, positions, *, load=None):
  """Our decoder's float32 logits (as float64 numpy) for `dtype` weights and compute."""
  import jax

  from aci_jax.model import Decoder, ModelConfig
  from aci_jax.model.weights import load_params

  cfg = ModelConfig.from_pretrained(directory, dtype=dtype, param_dtype=dtype)
  params = (load or load_params)(directory, cfg)
  fwd = jax.jit(lambda prm, tok, pos, val: Decoder(cfg).apply(
      {"params": prm}, tok, pos, valid=val)[0])
  # "highest": a float32 check must run float32 matmuls (TPU's default is bf16 passes).
  with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
    out = fwd(params, tokens, positions, valid)
  return np.asarray(out, np.float64), cfg


def main(argv=None, *, load=None) -> int:
  """`load(directory, cfg) -> params` replaces `load_params` (tests inject broken loaders)."""
  p = argparse.ArgumentParser(prog="python -m aci_jax.verify_checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("directory")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute and parameter dtype of our model")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=32)
  p.add_argument("--left-pad", type=int, default=3, help="left padding of the second row")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.batch < 1 or args.length < 1 or not 0 <= args.left_pad < args.length:
    print("error: need batch >= 1, length >= 1 and 0 <= left-pad < length", file=sys.stderr)
    return 2
  _need_torch()

  import jax.numpy as jnp

  from aci_jax.model import ModelConfig, UnsupportedConfigError, positions_from_valid
  from aci_jax.model.safetensors_io import CheckpointError

  from aci_jax.model.weights import resolve_export

  t0 = time.perf_counter()
  try:
    directory = resolve_export(args.directory)
    if directory != args.directory:
      print(f"{args.directory} is a run's export root: checking its newest export, {directory}")
    args.directory = directory
    cfg = ModelConfig.from_pretrained(args.directory)
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    valid = np.ones((args.batch, args.length), bool)
    if args.batch > 1:
      valid[1, :args.left_pad] = False
    positions = np.asarray(positions_from_valid(jnp.asarray(valid)))
    ours, cfg = our_logits(args.directory, args.dtype, tokens, valid, positions, load=load)
  except (UnsupportedConfigError, CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"loaded {cfg.arch} ({cfg.num_params() / 1e6:.1f}M params, {cfg.num_layers} layers); "
        f"batch {args.batch} x {args.length}, {int(valid.sum())} real tokens, seed {args.seed}")
  ref = torch_logits(load_torch(args.directory, "float64"), tokens, valid, positions)
  other = torch_logits(load_torch(args.directory, args.dtype), tokens, valid, positions)
  if ours.shape != ref.shape:
    print(f"error: logits shape {ours.shape} vs reference {ref.shape}", file=sys.stderr)
    return 1
  print("reference: transformers in float64 with its float32 casts removed (RMSNorm, RoPE, "
        "softmax)")
  verdict = float32_verdict if args.dtype == "float32" else bfloat16_verdict
  ok, report = verdict(ours, other, ref, valid)
  print(f"{args.dtype} check (ours: {'highest' if args.dtype == 'float32' else 'default'} "
        f"matmul precision):")
  print(report)
  print(f"{'OK' if ok else 'FAIL'} ({time.perf_counter() - t0:.1f}s)")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
