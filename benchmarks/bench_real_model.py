"""Speed on a real checkpoint (SmolLM2-135M-Instruct): decode vs `generate`, train step vs torch.

    python benchmarks/bench_real_model.py [decode] [train] [--batches 1,8,32] [--new 128]
        [--capacity 0] [--bf16] [--threads 2]

decode: greedy generation of `--new` tokens after a real ChatML prompt (a GSM8K-style question,
the same in every row), float32 both sides, EOS disabled so every row makes exactly `--new`
tokens. Ours: `extend` prefill + the `lax.while_loop` decode of `aci_jax.sampling`, the KV cache
sized to the job (prompt + new + 1 slots) unless `--capacity N` (e.g. 4096, the paper preset's
slots: every decode step reads every slot). Theirs: `model.generate` (sdpa, torch threads
`--threads`). Also ours in bfloat16 with `--bf16`. Prints tokens/s, the ratio ours/theirs, the
greedy-token agreement, and the roofline: bytes a decode step must read (the weights in the
compute dtype, the tied embedding once as the LM head, plus the K/V cache slots read) divided by
the step time, against this machine's streaming read bandwidth measured in the same run
(a jitted reduction over a 1 GiB array).

train: one optimizer step (forward, NLL, backward, clip, AdamW; batch 4 x 128 tokens, float32) of
ours (`aci_jax.train.make_train_step`) against `transformers` + torch on the same weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import median_time  # noqa: E402

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
            "clips in May. How many clips did Natalia sell altogether in April and May?")


def stream_bandwidth() -> float:
  """Bytes/s of a jitted sum over a 1 GiB float32 array (what a weight-bound step can reach)."""
  import jax
  import jax.numpy as jnp

  x = jnp.ones((2**28,), jnp.float32)
  f = jax.jit(lambda a: a.sum())
  sec = median_time(lambda: f(x).block_until_ready(), 5)
  return x.nbytes / sec


def bench_decode(args, directory):
  import jax.numpy as jnp
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM

  from aci_jax.model import ModelConfig
  from aci_jax.model.decoder import unstack_layers
  from aci_jax.model.weights import load_params
  from aci_jax.sampling import SamplingParams, build_matcher
  from aci_jax.sampling import sampler as S
  from aci_jax.tokenizer import Tokenizer

  torch.set_num_threads(args.threads)
  tok = Tokenizer.from_pretrained(directory)
  prompt_ids = tok.chat_ids([{"role": "user", "content": QUESTION}])
  p_len = len(prompt_ids)
  model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                               attn_implementation="sdpa").eval()
  bw = stream_bandwidth()
  print(f"# SmolLM2-135M-Instruct decode: prompt {p_len} tokens (ChatML), {args.new} new, "
        f"greedy, EOS off; torch threads {args.threads}; {platform.machine()} "
        f"{os.cpu_count()} cores; streaming read bandwidth {bw / 1e9:.1f} GB/s (same run)")
  print(f"{'dtype':>9}{'batch':>6}{'slots':>7}{'ours tok/s':>12}{'hf tok/s':>10}{'ratio':>7}"
        f"{'ms/step':>9}{'MB/step':>9}{'GB/s':>7}{'roofline':>9}{'same tokens':>13}"
        f"{'stacked ms/step':>17}")
  dtypes = ["float32"] + (["bfloat16"] if args.bf16 else [])
  hf_cache = {}
  for dtype in dtypes:
    cfg = ModelConfig.from_pretrained(directory, dtype=dtype, param_dtype=dtype)
    stacked = load_params(directory, cfg)
    # What the rollout engine samples from on one CPU device (RolloutEngine.place_params); the
    # stacked tree (scanned layers) is timed too, as the in-run baseline of that choice.
    params = unstack_layers(stacked)
    never = build_matcher(("\x01",), [""] * cfg.vocab_size)
    tables = S.Tables(jnp.asarray(never.next), jnp.asarray(never.hit),
                      jnp.asarray([False, True]), jnp.asarray(never.next),
                      jnp.asarray(never.hit > 0), jnp.asarray([-1], jnp.int32))
    sp = SamplingParams(greedy=True)
    itemsize = jnp.dtype(cfg.compute_dtype).itemsize
    for b in [int(x) for x in args.batches.split(",")]:
      prompt = np.tile(np.asarray(prompt_ids, np.int32), (b, 1))
      slots = args.capacity or (p_len + args.new + 1)

      def ours(b=b, prompt=prompt, slots=slots, cfg=cfg, params=params, tables=tables):
        st = S.SamplerState.init(cfg, b, slots, args.new)
        st = S.reset_rows(st, jnp.ones(b, bool), jnp.zeros((b, 2), jnp.uint32),
                          jnp.full(b, args.new), jnp.zeros(b, bool))
        st = S.extend(cfg, st, params, tables, jnp.asarray(prompt), jnp.ones(prompt.shape, bool),
                      jnp.zeros(b, jnp.int8), jnp.ones(b, bool), record=False)
        st, _ = S.decode(cfg, sp, st, params, tables, args.new, exit_on_pause=False)
        return np.asarray(st.out_tokens)

      def hf(b=b, prompt=prompt):
        with torch.inference_mode():
          return model.generate(input_ids=torch.tensor(prompt, dtype=torch.long),
                                attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                max_new_tokens=args.new, min_new_tokens=args.new,
                                do_sample=False, eos_token_id=None, pad_token_id=0
                                )[:, p_len:].numpy()

      a = ours()  # compile
      t_ours = median_time(ours, args.repeats)
      a_stacked = ours(params=stacked)
      t_stacked = median_time(lambda: ours(params=stacked), args.repeats)
      if b not in hf_cache:
        ref = hf()
        hf_cache[b] = (ref, median_time(hf, args.repeats))
      ref, t_hf = hf_cache[b]
      agree = float((a[:, :ref.shape[1]] == ref).mean())
      # Prefill is a small part (one extend of p_len tokens); attribute the time to the steps.
      step = t_ours / args.new
      kv = 2 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim * b * itemsize
      nbytes = cfg.num_params() * itemsize + kv
      n = b * args.new
      print(f"{dtype:>9}{b:>6}{slots:>7}{n / t_ours:>12.0f}{n / t_hf:>10.0f}"
            f"{t_hf / t_ours:>7.2f}{step * 1e3:>9.2f}{nbytes / 1e6:>9.0f}"
            f"{nbytes / step / 1e9:>7.1f}{nbytes / step / bw:>9.0%}{agree:>13.0%}"
            f"{t_stacked / args.new * 1e3:>17.2f}", flush=True)
      if not (a_stacked == a).all():
        print(f"#   batch {b}: stacked and unstacked layers chose different greedy tokens at "
              f"{int((a_stacked != a).sum())} positions")
    del params, stacked


def bench_train(args, directory):
  import numpy as np
  import torch
  from transformers import AutoModelForCausalLM

  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params
  from bench_train import _ours, _torch

  torch.set_num_threads(args.threads)
  cfg = ModelConfig.from_pretrained(directory)
  params = load_params(directory, cfg)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 128))
  ours = median_time(_ours(cfg, params, tokens, chunk=128), 3)
  del params
  model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32,
                                               attn_implementation="sdpa")
  torch_step, _ = _torch(model, tokens)
  theirs = median_time(torch_step, 3)
  n = tokens.size
  print(f"# SmolLM2-135M-Instruct train step, batch 4 x 128, float32, AdamW + clip, torch "
        f"threads {args.threads}")
  print(f"ours {n / ours:.0f} tok/s ({ours:.2f} s/step), torch {n / theirs:.0f} tok/s "
        f"({theirs:.2f} s/step), ratio ours/torch {theirs / ours:.2f}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", nargs="*", default=["decode", "train"], choices=["decode", "train"])
  p.add_argument("--batches", default="1,8,32")
  p.add_argument("--new", type=int, default=128)
  p.add_argument("--capacity", type=int, default=0, help="KV slots (0 = sized to the job)")
  p.add_argument("--bf16", action="store_true", help="also time ours in bfloat16")
  p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args(argv)
  from aci_jax.model.gguf import FetchError, smollm2_dir

  try:
    directory = smollm2_dir(quiet=False)
  except FetchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  if "decode" in args.what:
    bench_decode(args, directory)
  if "train" in args.what:
    bench_train(args, directory)
  print(f"# total {time.perf_counter() - t0:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
