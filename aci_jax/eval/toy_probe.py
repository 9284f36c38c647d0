"""Calibration probe for the toy task: is each family solvable by reasoning, by code, by both?

Trains a ~1M-parameter decoder from scratch on the toy's warm-up demonstrations (plain masked
next-token cross-entropy, the same model code as everything else), then runs the evaluation
harness on held-out problems with the real sandbox and grader and prints, per family, greedy
accuracy, code rate, forced-reasoning and forced-code accuracy and selection accuracy.

    python -m aci_jax.eval.toy_probe --steps 600 --code_fraction 0.1 --out /tmp/probe

Results measured with it are recorded in docs/toy.md. It is a measurement tool, not part of the
EM loop (the embedded default trains through `aci_jax.train`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def build_model(vocab_size: int, *, hidden: int = 128, layers: int = 4, heads: int = 4,
                kv_heads: int = 2, mlp: int = 384, max_len: int = 512):
  from aci_jax.model import ModelConfig

  return ModelConfig(arch="qwen2", vocab_size=vocab_size, hidden_size=hidden,
                     intermediate_size=mlp, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=hidden // heads,
                     max_position_embeddings=max_len, eos_token_ids=(256,))


def encode_all(tok, demos) -> tuple[np.ndarray, np.ndarray]:
  """Demos -> right-padded (tokens [N, T] int32, loss mask [N, T] float32), T a multiple of
  16."""
  from aci_jax.data.toy import encode_demo

  rows = []
  for d in demos:
    p, r, m = encode_demo(tok, d["prompt"], d["response"])
    rows.append((p + r, [0] * len(p) + m))
  width = -(-max(len(t) for t, _ in rows) // 16) * 16
  tokens = np.full((len(rows), width), tok.pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.float32)
  for i, (t, m) in enumerate(rows):
    tokens[i, :len(t)] = t
    mask[i, :len(m)] = m
  return tokens, mask


def train(cfg, tokens, mask, *, steps: int, batch: int, lr: float, seed: int, log_every: int = 100):
  """Masked next-token cross-entropy with AdamW (warm-up + cosine). Returns (params, losses)."""
  import jax
  import jax.numpy as jnp
  import optax

  from aci_jax.model import Decoder, init_params

  params = init_params(cfg, jax.random.key(seed))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10 + 1), steps, lr * 0.1)
  opt = optax.adamw(sched, b2=0.98, weight_decay=0.01)
  opt_state = opt.init(params)
  model = Decoder(cfg)

  def loss_fn(p, tok, m):
    pos = jnp.broadcast_to(jnp.arange(tok.shape[1], dtype=jnp.int32), tok.shape)
    logits, _ = model.apply({"params": p}, tok, pos)
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    nll = -jnp.take_along_axis(logp, tok[:, 1:, None], -1)[..., 0]
    w = m[:, 1:]  # the mask of the predicted token
    return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)

  @jax.jit
  def step(p, s, tok, m):
    loss, g = jax.value_and_grad(loss_fn)(p, tok, m)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  rng = np.random.default_rng(seed)
  losses = []
  for i in range(steps):
    idx = rng.integers(0, len(tokens), batch)
    params, opt_state, loss = step(params, opt_state, tokens[idx], mask[idx])
    if (i + 1) % log_every == 0 or i == steps - 1:
      losses.append((i + 1, float(loss)))
      print(f"step {i + 1}: loss {float(loss):.4f}", flush=True)
  return params, losses


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--families", default="compare,add,mul,powmod")
  ap.add_argument("--train_per_family", type=int, default=2000)
  ap.add_argument("--test_per_family", type=int, default=50)
  ap.add_argument("--code_fraction", type=float, default=0.1)
  ap.add_argument("--steps", type=int, default=600)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--lr", type=float, default=3e-3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=None, help="directory for trajectories and summary")
  ap.add_argument("--params", default=None,
                  help="msgpack file: loaded if it exists (no training), else written after it")
  a = ap.parse_args(argv)

  from aci_jax.data import toy
  from aci_jax.data.char_tokenizer import VOCAB_SIZE, char_tokenizer
  from aci_jax.eval import evaluate
  from aci_jax.grading import Grader
  from aci_jax.rollout import RolloutConfig, RolloutEngine
  from aci_jax.sampling import SamplingParams
  from aci_jax.sandbox import Sandbox

  fams = tuple(a.families.split(","))
  t0 = time.perf_counter()
  tok = char_tokenizer()
  train_p = toy.make_problems(a.train_per_family, split="train", families=fams, seed=a.seed)
  test_p = toy.make_problems(a.test_per_family, split="test", families=fams, seed=a.seed)
  demos = toy.make_demonstrations(train_p, code_fraction=a.code_fraction, seed=a.seed)
  tokens, mask = encode_all(tok, demos)
  cfg = build_model(VOCAB_SIZE)
  import jax
  from aci_jax.model import param_shapes

  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(cfg)))
  print(f"{len(demos)} demos, {tokens.shape[1]} tokens wide; model {n_params / 1e6:.2f}M params")
  from flax import serialization
  from aci_jax.model import init_params

  if a.params and os.path.exists(a.params):
    with open(a.params, "rb") as f:
      params = serialization.from_bytes(init_params(cfg, jax.random.key(0)), f.read())
    losses = []
    print(f"loaded {a.params}")
  else:
    params, losses = train(cfg, tokens, mask, steps=a.steps, batch=a.batch, lr=a.lr,
                           seed=a.seed)
    if a.params:  # the evaluation below can then be re-run without training again
      with open(a.params, "wb") as f:
        f.write(serialization.to_bytes(params))
  t_train = time.perf_counter() - t0
  rc = RolloutConfig(batch_size=64, max_prompt_tokens=64, max_new_tokens=96, decode_steps=32,
                     sampling=SamplingParams(greedy=True))
  with Sandbox(timeout_s=5.0) as sb, Grader(num_workers=1) as grader:
    engine = RolloutEngine(cfg, tok, rc, executor=sb)
    summary = evaluate(engine, params, tok, test_p, grader, samples=0, name="toy_heldout",
                       out_dir=a.out)
  summary["probe"] = dict(vars(a), params=n_params, train_seconds=t_train, losses=losses,
                          total_seconds=time.perf_counter() - t0)
  print(f"trained in {t_train:.0f} s; total {summary['probe']['total_seconds']:.0f} s")
  print(f"{'family':10s} {'greedy':>7s} {'code':>6s} {'f.cot':>6s} {'f.code':>7s} {'select':>7s}")
  rows = [("all", summary)] + sorted(summary["by_family"].items())
  for name, s in rows:
    sel = s["selection"]
    fmt = lambda x: "  -   " if x is None else f"{x:6.2f}"
    print(f"{name:10s} {fmt(s['accuracy']):>7s} {fmt(s['code_rate'])} "
          f"{fmt(sel['forced_cot_accuracy'])} {fmt(sel['forced_code_accuracy']):>7s} "
          f"{fmt(s['selection_accuracy']):>7s}")
  if a.out:
    with open(os.path.join(a.out, "probe.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


if __name__ == "__main__":
  main()
