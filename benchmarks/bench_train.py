"""Training throughput: our jitted train step vs a `transformers` + torch training step.

    python benchmarks/bench_train.py [--sizes tiny,small] [--batch 4] [--length 128]
        [--repeats 5] [--threads 1,2]
    python benchmarks/bench_train.py --mfu [--mfu-sizes qwen2.5-0.5b,qwen2.5-1.5b]   # GPU/TPU

CPU mode: for each size, one random Qwen2 checkpoint; both sides run a full optimizer step on the
same [batch, length] tokens (float32): forward, NLL on every next token, backward, global-norm
clipping at 1.0, AdamW. Ours is `aci_jax.train.make_train_step` (chunked log-probs, jit, donated
state) on one device; theirs is `model(input_ids, labels=...)`, `loss.backward()`,
`clip_grad_norm_`, `torch.optim.AdamW.step()` with sdpa attention. Median of `--repeats` steps
after warm-up (compilation excluded for JAX). torch is timed once per `--threads` value
(`torch.set_num_threads`); XLA always uses its own pool over all cores. The ratio is ours /
the best torch figure.

MFU mode (an accelerator): Qwen2.5-0.5B- and 1.5B-shaped models (random weights) in bf16 compute
with float32 master weights, sequence length 2048, remat "dots"; model FLOPs per token =
6 * (non-embedding params + lm head) + 12 * layers * length * hidden (attention, causal not
halved, as in the PaLM appendix), MFU = achieved / peak bf16 FLOP/s of the device (`--peak-tflops`,
default by device kind).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

from timing import median_time

SIZES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab) -- as bench_model_forward.py
    "tiny": (256, 704, 4, 4, 2, 8192),
    "small": (512, 1408, 4, 8, 2, 32000),
    "qwen0.5b-4l": (896, 4864, 4, 14, 2, 151936),
}
MFU_SIZES = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "v5e": 197.0,
                    "v5p": 459.0, "v4": 275.0, "v6": 918.0}


def _ours(cfg, params, tokens, *, lr=1e-4, micro=1, chunk=512, logits_remat=True):
  """A closure running one of our train steps (blocking) on the default devices."""
  import jax
  import numpy as np

  from aci_jax.parallel import MeshConfig, make_mesh
  from aci_jax.train import (LossConfig, OptimConfig, StepConfig, init_train_state,
                             make_optimizer, make_train_step, shard_batch)

  mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
  tx, sched = make_optimizer(OptimConfig(lr=lr, warmup_steps=0, decay_steps=10_000,
                                         weight_decay=0.01, clip_norm=1.0))
  state, sh = init_train_state(params, tx, mesh, seed=0)
  fn = make_train_step(cfg, LossConfig(policy="sft_nll"), tx, sched, mesh, sh,
                       StepConfig(micro_batches=micro, logprob_chunk=chunk,
                                  logprob_remat=logits_remat))
  b, t = tokens.shape
  batch = shard_batch(dict(tokens=tokens.astype(np.int32),
                           positions=np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
                           valid=np.ones((b, t), bool),
                           loss_mask=np.ones((b, t), np.float32)), mesh)
  box = [state]

  def step():
    box[0], m = fn(box[0], batch)
    jax.block_until_ready(m["loss"])
    return float(m["loss"])

  return step


def cpu_benchmark(args):
  import jax
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM, Qwen2Config

  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params

  threads = [int(x) for x in args.threads.split(",")]
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
        f"batch {args.batch} x length {args.length}, float32, AdamW + clip, full step")
  head = "".join(f"{f'torch {n}t tok/s':>16}" for n in threads)
  print(f"{'size':<14}{'params':>9}{'ours tok/s':>13}{'no-remat':>10}{head}{'ratio':>8}"
        f"{'ratio nr':>9}")
  for name in args.sizes.split(","):
    d, f, layers, h, k, v = SIZES[name]
    hf_cfg = Qwen2Config(vocab_size=v, hidden_size=d, intermediate_size=f,
                         num_hidden_layers=layers, num_attention_heads=h,
                         num_key_value_heads=k, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").float()
    with tempfile.TemporaryDirectory() as tmp:
      model.save_pretrained(tmp)
      cfg = ModelConfig.from_pretrained(tmp)
      params = load_params(tmp, cfg)
    tokens = np.random.default_rng(0).integers(0, v, (args.batch, args.length))
    ours = median_time(_ours(cfg, params, tokens), args.repeats)
    ours_nr = median_time(_ours(cfg, params, tokens, logits_remat=False), args.repeats)
    del params

    torch_step, opt = _torch(model, tokens)
    theirs = []
    for n in threads:
      torch.set_num_threads(n)
      theirs.append(median_time(torch_step, args.repeats))
    ntok = args.batch * args.length
    cols = "".join(f"{ntok / x:>16.0f}" for x in theirs)
    print(f"{name:<14}{cfg.num_params() / 1e6:>8.0f}M{ntok / ours:>13.0f}{ntok / ours_nr:>10.0f}"
          f"{cols}{min(theirs) / ours:>8.2f}{min(theirs) / ours_nr:>9.2f}", flush=True)
    del model, opt


def _torch(model, tokens):
  """The torch baseline of `_ours`: (one AdamW + clip step on `tokens` [B, T], optimizer)."""
  import torch
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
  tt = torch.tensor(tokens)

  def step():
    loss = model(input_ids=tt, labels=tt).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  return step, opt


def model_flops_per_token(cfg, length: int) -> float:
  embed = cfg.vocab_size * cfg.hidden_size
  dense = cfg.num_params() - embed + (embed if cfg.tie_word_embeddings else 0)
  # ^ non-embedding weights plus the LM head matmul (tied or not, it is a D x V matmul).
  return 6.0 * dense + 12.0 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim


def mfu_benchmark(args):
  import jax
  import numpy as np

  from aci_jax.model import ModelConfig, init_params

  dev = jax.devices()[0]
  peak = args.peak_tflops
  if peak is None:
    peak = next((p for key, p in PEAK_BF16_TFLOPS.items() if key in dev.device_kind), None)
  if peak is None:
    sys.exit(f"unknown peak for {dev.device_kind!r}; pass --peak-tflops")
  print(f"# {dev.device_kind} ({jax.default_backend()}), peak {peak} bf16 TFLOP/s, jax "
        f"{jax.__version__}, length {args.mfu_length}, bf16 compute, f32 master weights")
  print(f"{'size':<14}{'batch':>6}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}")
  for name in args.mfu_sizes.split(","):
    d, f, layers, h, k, v = MFU_SIZES[name]
    cfg = ModelConfig(arch="qwen2", vocab_size=v, hidden_size=d, intermediate_size=f,
                      num_layers=layers, num_heads=h, num_kv_heads=k, head_dim=d // h,
                      qkv_bias=True, tie_word_embeddings=True, dtype="bfloat16",
                      param_dtype="float32", remat=args.remat)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, v, (args.mfu_batch, args.mfu_length))
    sec = median_time(_ours(cfg, params, tokens, chunk=512), args.repeats)
    tps = tokens.size / sec
    flops = tps * model_flops_per_token(cfg, args.mfu_length)
    print(f"{name:<14}{args.mfu_batch:>6}{tps:>10.0f}{flops / 1e12:>9.1f}"
          f"{flops / (peak * 1e12):>7.1%}", flush=True)
    del params


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--sizes", default="tiny,small")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", default="1,2", help="torch intra-op thread counts to time")
  p.add_argument("--mfu", action="store_true", help="accelerator MFU benchmark instead")
  p.add_argument("--mfu-sizes", default=",".join(MFU_SIZES))
  p.add_argument("--mfu-batch", type=int, default=8)
  p.add_argument("--mfu-length", type=int, default=2048)
  p.add_argument("--remat", default="dots", choices=["none", "full", "dots"])
  p.add_argument("--peak-tflops", type=float, default=None)
  args = p.parse_args(argv)
  if args.mfu:
    import jax
    if jax.default_backend() == "cpu":
      sys.exit("--mfu needs a GPU or TPU; this machine has only a CPU backend")
    mfu_benchmark(args)
  else:
    cpu_benchmark(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
