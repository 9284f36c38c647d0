"""Loss terms, registered by name, and the objective that combines them.

Every per-token array here is *target-aligned*: index t describes token t+1 of the batch (the
token predicted from the prefix ending at t), so arrays have length S = T - 1. `prepare_targets`
does that shift once, for every key at the same time, so a term can never mix an unshifted mask
with shifted log-probs.

A term is `token_loss(ctx, cfg) -> (values [B, S], stats)`; which tokens it covers is its
`mask(batch, cfg)` (from the batch and the static config, never from the parameters).
Aggregation turns a mask into *weights* over the whole batch before any micro-batching:

  token_mean:  w[b, t] = m[b, t] / sum(m)                       (every token counts the same)
  seq_mean:    w[b, t] = m[b, t] / (n_b * R)                     (every sequence counts the same;
               n_b = tokens of row b under m, R = rows with n_b > 0)

so the loss of a term is `sum(w * values)`, a plain sum that splits across micro-batches exactly:
k accumulated micro-batches give the gradient of the whole batch. Terms and their coefficient:

  policy term (one of ppo_clip | tis | grpo | sft_nll)   x 1
  decision_ce                                            x loss.decision_coef   (lambda)
  kl_k3 / kl_k1 / kl_k2 to a reference policy            x loss.kl_coef         (0 = off)
      on every model-written token, or (loss.kl_tokens = "after_decision") on all but the first
      of each row: the decision token, where a response opens with the code fence or not

Diagnostics (`stats`) are per-token arrays reduced with the term's weights ("mean"), or masked
min / max; `advantage_stats` summarises advantages per sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]

AGGREGATIONS = ("token_mean", "seq_mean")
KL_TOKENS = ("all", "after_decision")


@dataclasses.dataclass(frozen=True)
class TokenContext:
  """Target-aligned inputs of a loss term; every array is [B, S] float32 unless noted."""

  logp: jax.Array  # log pi_theta(token) under the current parameters (differentiable)
  entropy: jax.Array  # entropy of pi_theta at that position (no gradient)
  mask: jax.Array  # 1 on model-generated tokens (loss_mask shifted)
  behaviour_logp: jax.Array | None  # log mu(token) recorded at sampling time
  advantages: jax.Array | None  # broadcast to [B, S]
  ref_logp: jax.Array | None  # log pi_ref(token)
  decision_mask: jax.Array | None  # [B] 1 on rows that get the decision term


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A registered loss term.

  token_loss: (ctx, cfg) -> (values [B, S], stats {name: (reduction, [B, S])}), reduction in
    {"mean", "min", "max"}; "mean" is weighted like the loss itself.
  mask: (target-aligned batch, LossConfig) -> [B, S] float mask of the tokens the term covers.
  needs: batch keys the term requires (checked before tracing, with a clear message).
  """

  name: str
  token_loss: Callable[[TokenContext, Any], tuple[jax.Array, dict]]
  mask: Callable[[Batch], jax.Array]
  needs: tuple[str, ...] = ()


LOSSES: dict[str, LossTerm] = {}


def register_loss(name: str, *, needs: tuple[str, ...] = (), mask=None):
  """Decorator: `@register_loss("name", needs=("advantages",))` over a token_loss function."""

  def wrap(fn):
    if name in LOSSES:
      raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = LossTerm(name, fn, mask or _loss_mask, tuple(needs))
    return fn

  return wrap


def get_loss(name: str) -> LossTerm:
  if name not in LOSSES:
    raise KeyError(f"unknown loss {name!r}; registered: {', '.join(sorted(LOSSES))}")
  return LOSSES[name]


def _loss_mask(b: Batch, cfg) -> jax.Array:
  del cfg
  return b["loss_mask"]


def _decision_rows_mask(b: Batch, cfg) -> jax.Array:
  del cfg
  return b["loss_mask"] * b["decision_mask"][:, None]


def first_token_mask(mask: jax.Array) -> jax.Array:
  """[B, S] 1 at the first covered position of each row (the first response token: the decision
  between opening the code fence and reasoning), 0 elsewhere."""
  return mask * (jnp.cumsum(mask, axis=1) == 1)


def _kl_mask(b: Batch, cfg) -> jax.Array:
  m = b["loss_mask"]
  return m - first_token_mask(m) if cfg.kl_tokens == "after_decision" else m


# ----------------------------------------------------------------------------- policy terms


def _clip_ratio(cfg):
  return 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high


def _ratio_stats(ratio, lo, hi, adv, clipped):
  return {
      "clip_frac": ("mean", clipped.astype(jnp.float32)),
      "clip_frac_low": ("mean", ((ratio < lo) & (adv < 0)).astype(jnp.float32)),
      "clip_frac_high": ("mean", ((ratio > hi) & (adv > 0)).astype(jnp.float32)),
      "ratio_mean": ("mean", ratio),
      "ratio_min": ("min", ratio),
      "ratio_max": ("max", ratio),
  }


@register_loss("ppo_clip", needs=("behaviour_logp", "advantages"))
def ppo_clip(ctx: TokenContext, cfg):
  """Off-policy clipped IS, PPO min-form: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A),
  rho = pi_theta / mu with mu the behaviour policy recorded at sampling time."""
  lo, hi = _clip_ratio(cfg)
  log_ratio = ctx.logp - ctx.behaviour_logp
  # Clamp the exponent only where it can overflow float32; such tokens are clipped anyway.
  ratio = jnp.exp(jnp.minimum(log_ratio, cfg.max_log_ratio))
  adv = ctx.advantages
  unclipped = ratio * adv
  clipped_obj = jnp.clip(ratio, lo, hi) * adv
  values = -jnp.minimum(unclipped, clipped_obj)
  # A token is "clipped" when the clipped branch is the active one (its gradient is zero).
  clipped = clipped_obj < unclipped
  return values, _ratio_stats(ratio, lo, hi, adv, clipped)


@register_loss("tis", needs=("behaviour_logp", "advantages"))
def truncated_is(ctx: TokenContext, cfg):
  """Detached truncated-IS policy gradient: -sg(clip(rho, 1-eps_low, 1+eps_high)) A log pi.

  Unlike the min-form, no token's gradient is zeroed: the IS weight is only bounded (as in
  CISPO / truncated-IS corrections), so rare high-ratio tokens still learn with weight 1+eps_high.
  """
  lo, hi = _clip_ratio(cfg)
  ratio = jnp.exp(jnp.minimum(ctx.logp - ctx.behaviour_logp, cfg.max_log_ratio))
  weight = jax.lax.stop_gradient(jnp.clip(ratio, lo, hi))
  adv = ctx.advantages
  values = -weight * adv * ctx.logp
  clipped = (ratio < lo) | (ratio > hi)
  return values, _ratio_stats(jax.lax.stop_gradient(ratio), lo, hi, adv, clipped)


@register_loss("grpo", needs=("advantages",))
def grpo(ctx: TokenContext, cfg):
  """On-policy GRPO (DeepSeekMath): -min(rho A, clip(rho) A) with pi_old = pi_theta.

  With one update per batch of fresh samples pi_old equals the current policy, so
  rho = exp(logp - sg(logp)) is exactly 1 in value and its gradient is A * grad log pi; the
  behaviour log-probs are not needed (numerical sampler/trainer mismatch is *not* corrected; use
  ppo_clip for that). Pair with seq_mean aggregation and group-whitened advantages (the
  default in configs) and optionally kl_coef > 0 for the paper's KL penalty.
  """
  lo, hi = _clip_ratio(cfg)
  ratio = jnp.exp(ctx.logp - jax.lax.stop_gradient(ctx.logp))
  adv = ctx.advantages
  unclipped = ratio * adv
  clipped_obj = jnp.clip(ratio, lo, hi) * adv
  values = -jnp.minimum(unclipped, clipped_obj)
  stats = _ratio_stats(ratio, lo, hi, adv, clipped_obj < unclipped)
  if ctx.behaviour_logp is not None:  # how far the sampler's numbers are from ours
    stats["behaviour_ratio_max"] = ("max", jnp.exp(jnp.minimum(
        jax.lax.stop_gradient(ctx.logp) - ctx.behaviour_logp, cfg.max_log_ratio)))
  return values, stats


@register_loss("sft_nll")
def sft_nll(ctx: TokenContext, cfg):
  """Supervised negative log-likelihood of the model-written tokens."""
  del cfg
  return -ctx.logp, {}


@register_loss("decision_ce", needs=("decision_mask",), mask=_decision_rows_mask)
def decision_ce(ctx: TokenContext, cfg):
  """The AutoCode decision term: NLL of the selected (correct, chosen-decision) trajectories,
  i.e. the rows with decision_mask = 1; weighted by loss.decision_coef (lambda)."""
  del cfg
  return -ctx.logp, {}


def _kl_log_ratio(ctx):
  # log(pi_ref / pi_theta); sampled under the current policy's tokens.
  return ctx.ref_logp - ctx.logp


@register_loss("kl_k3", needs=("ref_logp",), mask=_kl_mask)
def kl_k3(ctx: TokenContext, cfg):
  """KL(pi_theta || pi_ref) per token, Schulman's k3 estimator exp(r) - r - 1, r = log ref/pi
  (unbiased for samples from pi_theta, always >= 0, low variance; the GRPO paper's choice)."""
  r = jnp.clip(_kl_log_ratio(ctx), -cfg.max_log_ratio, cfg.max_log_ratio)
  return jnp.exp(r) - r - 1.0, {}


@register_loss("kl_k1", needs=("ref_logp",), mask=_kl_mask)
def kl_k1(ctx: TokenContext, cfg):
  """KL estimator k1 = log pi - log ref (unbiased, high variance, can be negative)."""
  del cfg
  return -_kl_log_ratio(ctx), {}


@register_loss("kl_k2", needs=("ref_logp",), mask=_kl_mask)
def kl_k2(ctx: TokenContext, cfg):
  """KL estimator k2 = (log pi - log ref)^2 / 2 (biased, low variance)."""
  del cfg
  return 0.5 * _kl_log_ratio(ctx) ** 2, {}


# -------------------------------------------------------------------------------- objective


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """What the objective is; hashable so it can be static under jit.

  policy: a registered policy term (ppo_clip, tis, grpo, sft_nll, or one of yours).
  decision_coef: lambda of decision_ce (0 = off). kl_coef with kl_estimator ("k3" | "k1" |
  "k2"); 0 = off (default, as in the paper). kl_tokens: "all" (every model-written token) or
  "after_decision" (not the first response token: the anchor then holds *how* the policy
  reasons and codes, while the decision to code moves freely; a KL on the decision token pulls
  the code rate back toward the reference's).
  aggregation: "token_mean" | "seq_mean", for every term.
  """

  policy: str = "ppo_clip"
  clip_eps_low: float = 0.2
  clip_eps_high: float = 0.2
  decision_coef: float = 0.0
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  kl_tokens: str = "all"
  aggregation: str = "token_mean"
  max_log_ratio: float = 20.0  # exp(20) ~ 5e8: bounded, never inf

  def __post_init__(self):
    get_loss(self.policy)
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
    if self.kl_estimator not in ("k1", "k2", "k3"):
      raise ValueError(f"kl_estimator must be k1|k2|k3, got {self.kl_estimator!r}")
    if self.kl_tokens not in KL_TOKENS:
      raise ValueError(f"kl_tokens must be one of {KL_TOKENS}, got {self.kl_tokens!r}")
    if not (0.0 <= self.clip_eps_low < 1.0) or self.clip_eps_high < 0.0:
      raise ValueError(f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got "
                       f"{self.clip_eps_low}, {self.clip_eps_high}")
    if self.decision_coef < 0 or self.kl_coef < 0:
      raise ValueError("decision_coef and kl_coef must be >= 0")

  def terms(self) -> tuple[tuple[str, float], ...]:
    """(registered name, coefficient) of every active term; the policy term first."""
    out = [(self.policy, 1.0)]
    if self.decision_coef > 0:
      out.append(("decision_ce", float(self.decision_coef)))
    if self.kl_coef > 0:
      out.append((f"kl_{self.kl_estimator}", float(self.kl_coef)))
    return tuple(out)

  def required_keys(self) -> set[str]:
    keys = {"tokens", "positions", "valid", "loss_mask"}
    for name, _ in self.terms():
      keys.update(get_loss(name).needs)
    return keys


def check_batch(batch: Batch, cfg: LossConfig) -> None:
  """Raises ValueError naming the keys the objective needs that the batch lacks, or shapes
  that disagree."""
  missing = sorted(cfg.required_keys() - set(batch))
  if missing:
    raise ValueError(f"batch lacks {missing} needed by loss terms {[n for n, _ in cfg.terms()]}")
  b, t = batch["tokens"].shape
  for k, v in batch.items():
    if k in ("advantages", "decision_mask"):
      if v.shape[0] != b or v.ndim not in (1, 2) or (v.ndim == 2 and v.shape != (b, t)):
        raise ValueError(f"batch[{k!r}] has shape {v.shape}; want [{b}] or [{b}, {t}]")
    elif v.shape != (b, t):
      raise ValueError(f"batch[{k!r}] has shape {v.shape}; want [{b}, {t}]")


def prepare_targets(batch: Batch) -> dict:
  """Target-aligned float32 views: drops position 0 of every per-token array (no token predicts
  it), broadcasts [B] advantages to [B, S]. The loss mask is also ANDed with `valid`, so
  padding can never be trained even if a caller's mask is sloppy."""
  out = {}
  mask = batch["loss_mask"].astype(jnp.float32) * batch["valid"].astype(jnp.float32)
  out["loss_mask"] = mask[:, 1:]
  s = out["loss_mask"].shape[1]
  for k in ("behaviour_logp", "ref_logp"):
    if k in batch:
      out[k] = batch[k][:, 1:].astype(jnp.float32)
  if "advantages" in batch:
    a = batch["advantages"].astype(jnp.float32)
    out["advantages"] = a[:, 1:] if a.ndim == 2 else jnp.broadcast_to(a[:, None], (a.shape[0], s))
  if "decision_mask" in batch:
    out["decision_mask"] = batch["decision_mask"].astype(jnp.float32)
  return out


def aggregation_weights(mask: jax.Array, aggregation: str) -> jax.Array:
  """[B, S] weights summing to 1 over the batch (0 if the mask is empty); see module doc."""
  mask = mask.astype(jnp.float32)
  if aggregation == "token_mean":
    return mask / jnp.maximum(mask.sum(), 1.0)
  if aggregation == "seq_mean":
    n = mask.sum(axis=1, keepdims=True)
    rows = (n > 0).sum()
    return mask / jnp.maximum(n, 1.0) / jnp.maximum(rows, 1).astype(jnp.float32)
  raise ValueError(f"unknown aggregation {aggregation!r}")


def term_weights(targets: Batch, cfg: LossConfig) -> dict[str, jax.Array]:
  """{term name: [B, S] weights}, computed over the *whole* batch (before micro-batching)."""
  return {name: aggregation_weights(get_loss(name).mask(targets, cfg), cfg.aggregation)
          for name, _ in cfg.terms()}


def context(logp, entropy, targets: Batch) -> TokenContext:
  return TokenContext(logp=logp, entropy=entropy, mask=targets["loss_mask"],
                      behaviour_logp=targets.get("behaviour_logp"),
                      advantages=targets.get("advantages"), ref_logp=targets.get("ref_logp"),
                      decision_mask=targets.get("decision_mask"))


_BIG = 3.0e38


def objective(ctx: TokenContext, weights: Mapping[str, jax.Array], cfg: LossConfig):
  """Total loss (a scalar, a weighted *sum*: summing it over micro-batches gives the batch
  loss) and metrics. Metric reductions: "sum" (add across micro-batches), "min", "max"."""
  total = jnp.zeros((), jnp.float32)
  metrics: dict[str, tuple[str, jax.Array]] = {}
  for name, coef in cfg.terms():
    term = get_loss(name)
    w = weights[name]
    values, stats = term.token_loss(ctx, cfg)
    value = jnp.sum(w * values)
    total = total + coef * value
    metrics[f"loss/{name}"] = ("sum", value)
    covered = w > 0
    for key, (red, arr) in stats.items():
      arr = jax.lax.stop_gradient(arr).astype(jnp.float32)
      if red == "mean":
        metrics[f"{name}/{key}"] = ("sum", jnp.sum(w * arr))
      elif red == "min":
        metrics[f"{name}/{key}"] = ("min", jnp.min(jnp.where(covered, arr, _BIG)))
      elif red == "max":
        metrics[f"{name}/{key}"] = ("max", jnp.max(jnp.where(covered, arr, -_BIG)))
      else:
        raise ValueError(f"loss {name}: unknown stat reduction {red!r}")
  # Entropy of the policy on the tokens of the main term, weighted like it.
  w0 = weights[cfg.policy]
  metrics["entropy"] = ("sum", jnp.sum(w0 * jax.lax.stop_gradient(ctx.entropy)))
  metrics["loss"] = ("sum", jax.lax.stop_gradient(total))
  return total, metrics


def advantage_stats(targets: Batch) -> dict[str, jax.Array]:
  """Mean / std / min / max of the advantages over sequences that have loss tokens (per-token
  advantages are averaged per sequence first), and the fraction that are exactly zero."""
  if "advantages" not in targets:
    return {}
  m = targets["loss_mask"]
  n = m.sum(axis=1)
  rows = (n > 0).astype(jnp.float32)
  per_row = (targets["advantages"] * m).sum(axis=1) / jnp.maximum(n, 1.0)
  r = jnp.maximum(rows.sum(), 1.0)
  mean = (per_row * rows).sum() / r
  var = (((per_row - mean) ** 2) * rows).sum() / r
  return {
      "adv/mean": mean,
      "adv/std": jnp.sqrt(var),
      "adv/min": jnp.min(jnp.where(rows > 0, per_row, _BIG)),
      "adv/max": jnp.max(jnp.where(rows > 0, per_row, -_BIG)),
      "adv/zero_frac": ((per_row == 0) * rows).sum() / r,
  }
