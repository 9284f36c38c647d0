"""Teacher-forced greedy predictions: one forward pass per row gives, at every position, the
token greedy decoding would emit next given the true preceding tokens. Whenever the text is the
policy's own greedy continuation this equals generating it, so "would greedy decoding reproduce
this demo?" costs one forward instead of a decode loop. The warm-up's skill probes
(`warmup_probe`), its gate (`warmup_gate`) and the rare-code bars (`rare_code_bars`) all ask
their questions through this module.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.model import Decoder, ModelConfig


def greedy_next_fn(cfg: ModelConfig):
  """jit (params, tokens [B, W] int32, valid [B, W] bool) -> [B, W] int32: at each position the
  argmax next token. Rows are right-padded; positions count the valid tokens before each one."""
  model = Decoder(cfg)

  @jax.jit
  def greedy_next(params, tokens, valid):
    positions = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - valid.astype(jnp.int32)
    logits, _ = model.apply({"params": params}, tokens, positions, valid=valid)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  return greedy_next


def scored_exact(pred: np.ndarray, tokens: np.ndarray, scored: np.ndarray) -> np.ndarray:
  """[B] bool: at every scored position t the prediction is tokens[t + 1]. `scored` marks the
  positions whose *next* token is judged (a demo's loss mask), so unscored spans such as a
  sandbox's output are given, not predicted."""
  pred, tokens, scored = np.asarray(pred), np.asarray(tokens), np.asarray(scored, bool)
  nxt = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
  return np.all((pred == nxt) | ~scored, axis=1)


def teacher_forced_argmax(cfg: ModelConfig, params, contexts: Sequence[Sequence[int]],
                          targets: Sequence[Sequence[int]], *, batch: int = 64,
                          fn=None) -> list[np.ndarray]:
  """Per sequence, the greedy token at each target position given the true preceding tokens
  (context + target[:i]). `fn` is a `greedy_next_fn` to reuse across calls (one compile)."""
  if len(contexts) != len(targets) or not all(targets):
    raise ValueError("need one non-empty target per context")
  if not all(contexts):  # the first target token is predicted from the context's last one
    raise ValueError("every context needs at least one token")
  width = -(-max(len(c) + len(t) for c, t in zip(contexts, targets)) // 16) * 16
  fn = fn or greedy_next_fn(cfg)
  out = []
  for lo in range(0, len(contexts), batch):
    ctx, tgt = contexts[lo:lo + batch], targets[lo:lo + batch]
    tokens = np.zeros((batch, width), np.int32)
    valid = np.zeros((batch, width), bool)
    for r, (c, t) in enumerate(zip(ctx, tgt)):
      seq = list(c) + list(t)
      tokens[r, :len(seq)] = seq
      valid[r, :len(seq)] = True
    pred = np.asarray(fn(params, tokens, valid))
    # Position len(c) - 1 + i predicts target token i.
    out += [pred[r, len(c) - 1:len(c) - 1 + len(t)] for r, (c, t) in enumerate(zip(ctx, tgt))]
  return out


def teacher_forced_match(cfg: ModelConfig, params, contexts: Sequence[Sequence[int]],
                         targets: Sequence[Sequence[int]], *, batch: int = 64) -> np.ndarray:
  """Whether greedy decoding after each context reproduces its target exactly: [N] bool."""
  pred = teacher_forced_argmax(cfg, params, contexts, targets, batch=batch)
  return np.asarray([np.array_equal(p, np.asarray(t)) for p, t in zip(pred, targets)], bool)
