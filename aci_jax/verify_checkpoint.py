"""Checks that a Hugging Face checkpoint runs identically in aci_jax and in `transformers`.

    python -m aci_jax.verify_checkpoint DIR [--atol 1e-4] [--dtype float32] [--batch 2]
        [--length 16] [--seed 0] [--left-pad 3]

Loads DIR into our Flax decoder and into `transformers` (PyTorch, CPU, eager attention), runs
both on the same random token batch (optionally left-padded), prints the max absolute logit
difference over real tokens, and exits 1 when it exceeds `--atol` (2 on bad input). Use this
before training on a checkpoint we have not seen: an unsupported config, a renamed tensor or a
numerics problem shows up here and not as a silently worse policy.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _reference_logits(directory, tokens, valid, positions):
  try:
    import torch
    from transformers import AutoModelForCausalLM
  except ImportError as e:  # torch is a test/verification dependency only
    print(f"error: verify_checkpoint needs torch and transformers ({e}); install the CPU "
          "build: pip install torch==2.13.0 (or the test extra)", file=sys.stderr)
    raise SystemExit(2) from None
  model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                               attn_implementation="eager")
  model.eval()
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(valid.astype(np.int64)),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aci_jax.verify_checkpoint", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("directory")
  p.add_argument("--atol", type=float, default=1e-4,
                 help="max allowed |logit difference| (default 1e-4, for float32)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute and parameter dtype of our model (reference is always float32)")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--length", type=int, default=16)
  p.add_argument("--left-pad", type=int, default=3, help="left padding of the second row")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.batch < 1 or args.length < 1 or not 0 <= args.left_pad < args.length:
    print("error: need batch >= 1, length >= 1 and 0 <= left-pad < length", file=sys.stderr)
    return 2

  import jax
  import jax.numpy as jnp

  from aci_jax.model import Decoder, ModelConfig, UnsupportedConfigError, positions_from_valid
  from aci_jax.model.safetensors_io import CheckpointError
  from aci_jax.model.weights import load_params

  try:
    cfg = ModelConfig.from_pretrained(args.directory, dtype=args.dtype, param_dtype=args.dtype)
    t0 = time.perf_counter()
    params = load_params(args.directory, cfg)
  except (UnsupportedConfigError, CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"loaded {cfg.arch} ({cfg.num_params() / 1e6:.1f}M params, {cfg.num_layers} layers) "
        f"in {time.perf_counter() - t0:.1f}s")

  rng = np.random.default_rng(args.seed)
  tokens = rng.integers(0, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
  valid = np.ones((args.batch, args.length), bool)
  if args.batch > 1:
    valid[1, :args.left_pad] = False
  positions = np.asarray(positions_from_valid(jnp.asarray(valid)))

  fwd = jax.jit(lambda prm, tok, pos, val: Decoder(cfg).apply(
      {"params": prm}, tok, pos, valid=val)[0])
  ours = np.asarray(fwd(params, tokens, positions, valid), np.float32)
  ref = _reference_logits(args.directory, tokens, valid, positions)
  if ours.shape != ref.shape:
    print(f"error: logits shape {ours.shape} vs reference {ref.shape}", file=sys.stderr)
    return 1
  diff = float(np.max(np.abs(ours - ref)[valid]))
  agree = float(np.mean((ours.argmax(-1) == ref.argmax(-1))[valid]))
  ok = diff <= args.atol
  print(f"max |logit diff| = {diff:.3e} (atol {args.atol:g}, dtype {args.dtype}); "
        f"argmax agreement {agree:.2%}: {'OK' if ok else 'FAIL'}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
