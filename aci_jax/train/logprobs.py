"""Per-token log-probabilities without materialising [B, T, V] float32 logits.

For a 152k vocabulary, [B, T, V] float32 logits are 0.6 GB per 1k tokens; their gradient doubles
that. We run the decoder to its final hidden states [B, T, D] and map them to logits one sequence
chunk at a time inside a `lax.scan` whose body is rematerialised (`jax.checkpoint`): the forward
keeps only [B, C, V] alive at once, and the backward recomputes each chunk's logits from the saved
hidden chunk instead of storing them. Peak logits memory is therefore O(B * C * V), independent of
T. Entropy is computed from the same chunk (as a diagnostic, without gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aci_jax.model import Decoder, ModelConfig
from aci_jax.model.decoder import LAYERS, unstack_layers


def target_logprobs(logits: jax.Array, targets: jax.Array):
  """log softmax(logits) at `targets`, and the entropy of softmax(logits) (gradient-free).

  logits [..., V] float32, targets [...] int32 -> (logp [...], entropy [...]). The policy's
  log-prob of a token at T = 1: the trainer's and, through the same function, the sampler's.
  """
  # One exp pass serves the log-normaliser and the entropy (exp over V dominates on CPU).
  m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  e = jnp.exp(logits - m)
  s = jnp.sum(e, axis=-1)
  lse = m[..., 0] + jnp.log(s)
  tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  probs = jax.lax.stop_gradient(e / s[..., None])
  ent = jax.lax.stop_gradient(lse - jnp.sum(probs * logits, axis=-1))
  return tgt - lse, ent


def chunked_logprobs(head_fn, hidden: jax.Array, targets: jax.Array, chunk: int,
                     remat: bool = True):
  """log p(targets) and entropy from hidden states, `chunk` positions at a time.

  Args:
    head_fn: [B, C, D] -> [B, C, V] float32 logits (closes over the parameters).
    hidden: [B, S, D] hidden states; position s predicts targets[:, s].
    targets: [B, S] int32 token ids.
    chunk: sequence positions per chunk (S is padded up to a multiple).
    remat: recompute each chunk's logits in the backward pass instead of storing them (what
      keeps [B, S, V] out of memory; costs one more head matmul. Turn off only for small
      vocabularies, where storing the logits is cheap).
  Returns:
    (logp [B, S] float32, entropy [B, S] float32, gradient-free).
  """
  b, s, d = hidden.shape
  chunk = max(1, min(chunk, s))
  n = -(-s // chunk)
  pad = n * chunk - s
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, C, D]
  ts = targets.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, C]

  def one(h, t):
    return target_logprobs(head_fn(h).astype(jnp.float32), t)  # via [B, C, V] logits

  if remat:
    one = jax.checkpoint(one)

  def body(carry, x):
    return carry, one(*x)

  _, (logp, ent) = jax.lax.scan(body, None, (hs, ts))
  logp = logp.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
  ent = ent.swapaxes(0, 1).reshape(b, n * chunk)[:, :s]
  return logp, ent


def token_logprobs(params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
                   valid: jax.Array, *, chunk: int = 512, remat: bool = True,
                   segment_ids: jax.Array | None = None, scan_layers: bool = True):
  """Shifted log-probabilities of a batch under the policy.

  Args:
    tokens, positions, valid: [B, T] (int32, int32, bool) as for `Decoder`.
    chunk: sequence positions per logits chunk.
    segment_ids: [B, T] int32 for rows that pack several sequences (see `Decoder`), or None.
    scan_layers: False runs stacked parameters' layers unrolled, each on its slice (the
      gradient is the same; see `StepConfig.scan_layers`).
  Returns:
    (logp [B, T-1], entropy [B, T-1]), float32; index t is log p(tokens[:, t+1] | tokens[:, :t+1]).
  """
  if not scan_layers and LAYERS in params:
    params = unstack_layers(params)
  model = Decoder.for_params(cfg, params)
  hidden, _ = model.apply({"params": params}, tokens, positions, valid=valid, return_hidden=True,
                          segment_ids=segment_ids)

  def head(h):
    return model.apply({"params": params}, h, method=Decoder.logits)

  return chunked_logprobs(head, hidden[:, :-1], tokens[:, 1:], chunk, remat)
