"""Forward-pass throughput: our jitted Flax decoder vs `transformers` PyTorch, same CPU, same config.

    python benchmarks/bench_model_forward.py [--batch 4] [--length 128] [--repeats 5]
        [--sizes tiny,small,qwen0.5b-4l] [--threads N]

For each size, builds one random Qwen2 checkpoint with transformers, loads the *same weights*
into our decoder, times a full forward over [batch, length] tokens in both (float32, no grad,
after warm-up/compilation), and prints tokens/s and the ratio ours / transformers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

from timing import median_time

SIZES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab)
    "tiny": (256, 704, 4, 4, 2, 8192),
    "small": (512, 1408, 4, 8, 2, 32000),
    # Qwen2.5-0.5B shapes (hidden 896, MLP 4864, 14 heads / 2 kv heads, 151936 vocab, tied
    # head) with 4 of its 24 layers, so it fits a laptop benchmark.
    "qwen0.5b-4l": (896, 4864, 4, 14, 2, 151936),
}


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--sizes", default=",".join(SIZES))
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="torch intra-op threads (XLA uses its own pool over all cores)")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM, Qwen2Config

  from aci_jax.model import Decoder, ModelConfig
  from aci_jax.model.weights import load_params

  torch.set_num_threads(args.threads)
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
        f"batch {args.batch} x length {args.length}, float32")
  print(f"{'size':<14}{'params':>9}{'ours tok/s':>13}{'hf tok/s':>12}{'ratio':>8}")
  for name in args.sizes.split(","):
    d, f, layers, h, k, v = SIZES[name]
    hf_cfg = Qwen2Config(vocab_size=v, hidden_size=d, intermediate_size=f,
                         num_hidden_layers=layers, num_attention_heads=h,
                         num_key_value_heads=k, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").float().eval()
    with tempfile.TemporaryDirectory() as tmp:
      model.save_pretrained(tmp)
      cfg = ModelConfig.from_pretrained(tmp)
      params = load_params(tmp, cfg)
    tokens = np.random.default_rng(0).integers(0, v, (args.batch, args.length))
    positions = jnp.broadcast_to(jnp.arange(args.length), tokens.shape)
    jt = jnp.asarray(tokens, jnp.int32)
    fwd = jax.jit(lambda prm, t, pos: Decoder(cfg).apply({"params": prm}, t, pos)[0])
    ours = median_time(lambda: fwd(params, jt, positions).block_until_ready(), args.repeats)
    tt = torch.tensor(tokens)
    with torch.inference_mode():
      ref = median_time(lambda: model(input_ids=tt).logits, args.repeats)
    n = args.batch * args.length
    print(f"{name:<14}{cfg.num_params() / 1e6:>8.0f}M{n / ours:>13.0f}{n / ref:>12.0f}"
          f"{ref / ours:>8.2f}")
    del model, params
  return 0


if __name__ == "__main__":
  sys.exit(main())
