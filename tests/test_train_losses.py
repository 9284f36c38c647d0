"""Every registered loss and its gradient against an independent NumPy float64 reference.

The "model" here is a free tensor of logits [B, T, V]; JAX computes log-probs through the
chunked path (chunk 3 over S = T - 1 = 8 positions, so the last chunk is padded) and
differentiates the objective with respect to the logits. The reference below re-derives
everything by hand in float64: shifted log-softmax, masks, aggregation weights, each term's value
and its derivative d loss / d logp, chained through d logp / d logits = onehot - softmax.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.train import losses as L
from aci_jax.train.logprobs import chunked_logprobs

B, T, V = 5, 9, 11


def make_batch(seed, per_token_adv=False):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 1.5, (B, T, V))
  tokens = rng.integers(0, V, (B, T))
  valid = np.ones((B, T), bool)
  valid[1, :3] = False  # left padding
  valid[3, -2:] = False  # right padding
  loss_mask = (rng.random((B, T)) < 0.7) & valid
  loss_mask[:, :2] = False  # the prompt
  loss_mask[2] = False  # a row with nothing to train on
  loss_mask[3, -2:] = True  # sloppy caller: mask on padding must be ignored
  ls = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  logp_true = np.take_along_axis(ls[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  behaviour = np.zeros((B, T))
  behaviour[:, 1:] = logp_true + rng.normal(0, 0.35, (B, T - 1))  # ratios around 1, some clip
  ref = np.zeros((B, T))
  ref[:, 1:] = logp_true + rng.normal(0, 0.5, (B, T - 1))
  adv = rng.normal(0, 1, (B, T)) if per_token_adv else rng.normal(0, 1, (B,))
  decision = np.array([1, 0, 1, 1, 0], np.float32)
  batch = dict(tokens=tokens.astype(np.int32), valid=valid, loss_mask=loss_mask.astype(np.float32),
               behaviour_logp=behaviour.astype(np.float32), ref_logp=ref.astype(np.float32),
               advantages=adv.astype(np.float32), decision_mask=decision,
               positions=np.zeros((B, T), np.int32))
  return logits, batch


# ------------------------------------------------------------------ float64 reference


def ref_objective(logits, batch, cfg: L.LossConfig):
  logits = np.asarray(logits, np.float64)
  lse = np.log(np.exp(logits).sum(-1, keepdims=True))
  p = np.exp(logits - lse)
  S = T - 1
  logp = np.zeros((B, S))
  ent = np.zeros((B, S))
  onehot = np.zeros((B, S, V))
  for b, s in itertools.product(range(B), range(S)):
    tok = batch["tokens"][b, s + 1]
    logp[b, s] = logits[b, s, tok] - lse[b, s, 0]
    ent[b, s] = -(p[b, s] * np.log(p[b, s])).sum()
    onehot[b, s, tok] = 1.0
  mask = (batch["loss_mask"][:, 1:] * batch["valid"][:, 1:]).astype(np.float64)
  old = batch["behaviour_logp"][:, 1:].astype(np.float64)
  ref = batch["ref_logp"][:, 1:].astype(np.float64)
  adv = batch["advantages"].astype(np.float64)
  adv = adv[:, 1:] if adv.ndim == 2 else np.repeat(adv[:, None], S, 1)
  dec = batch["decision_mask"].astype(np.float64)
  lo, hi = 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high

  def weights(m):
    w = np.zeros((B, S))
    if cfg.aggregation == "token_mean":
      tot = m.sum()
      return m / tot if tot > 0 else w
    rows = [b for b in range(B) if m[b].sum() > 0]
    for b in rows:
      w[b] = m[b] / m[b].sum() / len(rows)
    return w

  def term(name):
    v = np.zeros((B, S))
    g = np.zeros((B, S))  # d v / d logp
    m = mask * dec[:, None] if name == "decision_ce" else mask.copy()
    if name.startswith("kl_") and cfg.kl_tokens == "after_decision":
      for b in range(B):  # drop each row's first covered token (the decision)
        covered = np.flatnonzero(m[b])
        if covered.size:
          m[b, covered[0]] = 0.0
    for b, s in itertools.product(range(B), range(S)):
      lp, a = logp[b, s], adv[b, s]
      if name in ("ppo_clip", "grpo"):
        rho = np.exp(lp - old[b, s]) if name == "ppo_clip" else 1.0
        un, cl = rho * a, min(max(rho, lo), hi) * a
        v[b, s] = -min(un, cl)
        g[b, s] = -rho * a if un <= cl else 0.0
      elif name == "tis":
        rho = np.exp(lp - old[b, s])
        w = min(max(rho, lo), hi)
        v[b, s] = -w * a * lp
        g[b, s] = -w * a
      elif name in ("sft_nll", "decision_ce"):
        v[b, s], g[b, s] = -lp, -1.0
      elif name == "kl_k3":
        r = ref[b, s] - lp
        v[b, s], g[b, s] = np.exp(r) - r - 1, 1 - np.exp(r)
      elif name == "kl_k1":
        v[b, s], g[b, s] = lp - ref[b, s], 1.0
      elif name == "kl_k2":
        v[b, s], g[b, s] = 0.5 * (lp - ref[b, s]) ** 2, lp - ref[b, s]
    return v, g, weights(m)

  total, dlogp, parts = 0.0, np.zeros((B, S)), {}
  for name, coef in cfg.terms():
    v, g, w = term(name)
    parts[name] = (w * v).sum()
    total += coef * parts[name]
    dlogp += coef * w * g
  grad = np.zeros_like(logits)
  grad[:, :S] = dlogp[..., None] * (onehot - p[:, :S])
  # Diagnostics of the policy term.
  w0 = weights(mask)
  diag = {"entropy": (w0 * ent).sum()}
  if cfg.policy in ("ppo_clip", "tis"):
    rho = np.exp(logp - old)
    cov = w0 > 0
    diag["ratio_min"], diag["ratio_max"] = rho[cov].min(), rho[cov].max()
    diag["ratio_mean"] = (w0 * rho).sum()
    if cfg.policy == "ppo_clip":
      clipped = np.clip(rho, lo, hi) * adv < rho * adv
    else:
      clipped = (rho < lo) | (rho > hi)
    diag["clip_frac"] = (w0 * clipped).sum()
  return total, grad, parts, diag


# ------------------------------------------------------------------------- JAX side


def jax_objective(logits, batch, cfg):
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  targets = L.prepare_targets(jb)
  weights = L.term_weights(targets, cfg)

  def f(lg):
    logp, ent = chunked_logprobs(lambda h: h, lg[:, :-1], jb["tokens"][:, 1:], chunk=3)
    total, metrics = L.objective(L.context(logp, ent, targets), weights, cfg)
    return total, metrics

  (total, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logits, jnp.float32))
  return float(total), np.asarray(grad), {k: float(v) for k, (_, v) in metrics.items()}


CASES = [
    dict(policy=p, aggregation=a)
    for p in ("ppo_clip", "tis", "grpo", "sft_nll") for a in ("token_mean", "seq_mean")
] + [
    dict(policy="ppo_clip", decision_coef=0.7, aggregation="token_mean"),
    dict(policy="ppo_clip", decision_coef=0.3, aggregation="seq_mean",
         clip_eps_low=0.1, clip_eps_high=0.28),
    dict(policy="tis", clip_eps_low=0.3, clip_eps_high=0.1),
    dict(policy="grpo", kl_coef=0.04, kl_estimator="k3", aggregation="seq_mean"),
    dict(policy="ppo_clip", kl_coef=0.1, kl_estimator="k1"),
    dict(policy="sft_nll", kl_coef=0.2, kl_estimator="k2", decision_coef=0.5),
    dict(policy="ppo_clip", kl_coef=0.2, kl_tokens="after_decision"),
    dict(policy="grpo", kl_coef=0.3, kl_estimator="k2", kl_tokens="after_decision",
         aggregation="seq_mean"),
]


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_loss_and_gradient_match_float64_reference(case, per_token_adv):
  cfg = L.LossConfig(**case)
  for seed in (0, 1):
    logits, batch = make_batch(seed, per_token_adv)
    want, want_grad, parts, diag = ref_objective(logits, batch, cfg)
    got, got_grad, metrics = jax_objective(logits, batch, cfg)
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
    scale = np.abs(want_grad).max()
    assert scale > 0
    np.testing.assert_allclose(got_grad, want_grad, atol=2e-6 * max(1.0, scale), rtol=1e-4)
    for name, value in parts.items():
      np.testing.assert_allclose(metrics[f"loss/{name}"], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["entropy"], diag["entropy"], rtol=1e-5)
    for key in ("ratio_min", "ratio_max", "ratio_mean", "clip_frac"):
      if key in diag:
        np.testing.assert_allclose(metrics[f"{cfg.policy}/{key}"], diag[key], rtol=1e-5,
                                   atol=1e-7)


def test_reference_inputs_exercise_clipping():
  """The random behaviour log-probs must put tokens on both sides of the clip range, or the
  PPO test above would not see the clipped branch at all."""
  logits, batch = make_batch(0)
  _, _, _, diag = ref_objective(logits, batch, L.LossConfig(policy="ppo_clip"))
  assert 0.05 < diag["clip_frac"] < 0.8
  assert diag["ratio_min"] < 0.8 and diag["ratio_max"] > 1.2


def test_masked_tokens_get_no_gradient_and_padding_is_never_trained():
  logits, batch = make_batch(3)
  cfg = L.LossConfig(policy="ppo_clip", decision_coef=1.0, kl_coef=0.5)
  _, grad, _ = jax_objective(logits, batch, cfg)
  target_mask = (batch["loss_mask"] * batch["valid"])[:, 1:]
  dead = np.zeros((B, T), bool)
  dead[:, :-1] = target_mask == 0
  dead[:, -1] = True  # the last position predicts nothing
  assert np.abs(grad[dead]).max() == 0.0
  assert np.abs(grad[~dead]).max() > 0.0
  # Changing behaviour log-probs or advantages of masked tokens changes nothing.
  other = {k: v.copy() for k, v in batch.items()}
  other["behaviour_logp"][batch["loss_mask"] == 0] += 5.0
  other["advantages"][2] = 100.0  # row 2 has no loss tokens
  a = jax_objective(logits, batch, cfg)
  b = jax_objective(logits, other, cfg)
  assert a[0] == b[0]
  np.testing.assert_array_equal(a[1], b[1])


def test_kl_after_decision_leaves_the_decision_token_to_the_policy_term():
  """With kl_tokens="after_decision" and only the KL term active (sft_nll's advantages are none
  of its business, so: a policy term on no tokens), the gradient at each row's first response
  token is exactly 0 and elsewhere equals that of kl_tokens="all"."""
  logits, batch = make_batch(4)
  cfg_all = L.LossConfig(policy="ppo_clip", kl_coef=1.0)
  cfg_after = L.LossConfig(policy="ppo_clip", kl_coef=1.0, kl_tokens="after_decision")
  batch["advantages"][:] = 0.0  # the policy term contributes no gradient
  target_mask = (batch["loss_mask"] * batch["valid"])[:, 1:]
  first = np.zeros_like(target_mask, bool)
  for b in range(B):
    covered = np.flatnonzero(target_mask[b])
    if covered.size:
      first[b, covered[0]] = True
  assert first.sum() == 4  # row 2 has no loss tokens
  _, g_all, _ = jax_objective(logits, batch, cfg_all)
  _, g_after, _ = jax_objective(logits, batch, cfg_after)
  assert np.abs(g_all[:, :-1][first]).max() > 0
  assert np.abs(g_after[:, :-1][first]).max() == 0.0
  rest = (target_mask > 0) & ~first
  # token_mean: the "after" weights are 1/(n - 4) instead of 1/n on the same tokens
  n = target_mask.sum()
  np.testing.assert_allclose(g_after[:, :-1][rest] * (n - 4), g_all[:, :-1][rest] * n,
                             rtol=1e-5, atol=1e-7)


def test_registry_and_config_errors():
  assert {"ppo_clip", "tis", "grpo", "sft_nll", "decision_ce", "kl_k3"} <= set(L.LOSSES)
  with pytest.raises(KeyError, match="unknown loss 'nope'"):
    L.LossConfig(policy="nope")
  with pytest.raises(ValueError, match="aggregation"):
    L.LossConfig(aggregation="mean")
  with pytest.raises(ValueError, match="kl_tokens must be one of"):
    L.LossConfig(kl_tokens="decision")
  with pytest.raises(ValueError, match="already registered"):
    L.register_loss("ppo_clip")(lambda ctx, cfg: (ctx.logp, {}))
  cfg = L.LossConfig(policy="ppo_clip", decision_coef=1.0)
  _, batch = make_batch(0)
  del batch["decision_mask"]
  with pytest.raises(ValueError, match="decision_mask"):
    L.check_batch(batch, cfg)


def test_registered_custom_loss_is_selectable_by_name():
  name = "test_only_squared_logp"
  if name not in L.LOSSES:
    @L.register_loss(name)
    def _sq(ctx, cfg):
      del cfg
      return ctx.logp ** 2, {"logp_max": ("max", ctx.logp)}
  cfg = L.LossConfig(policy=name)
  logits, batch = make_batch(0)
  _, _, metrics = jax_objective(logits, batch, cfg)
  ls = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  logp = np.take_along_axis(ls[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
  m = (batch["loss_mask"] * batch["valid"])[:, 1:]
  np.testing.assert_allclose(metrics[f"loss/{name}"], (m * logp ** 2).sum() / m.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics[f"{name}/logp_max"], logp[m > 0].max(), rtol=1e-5)


def test_advantage_stats():
  _, batch = make_batch(4, per_token_adv=False)
  stats = L.advantage_stats(L.prepare_targets({k: jnp.asarray(v) for k, v in batch.items()}))
  m = (batch["loss_mask"] * batch["valid"])[:, 1:]
  rows = m.sum(1) > 0
  a = batch["advantages"][rows]
  np.testing.assert_allclose(stats["adv/mean"], a.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["adv/std"], a.std(), rtol=1e-5)
  np.testing.assert_allclose(stats["adv/min"], a.min(), rtol=1e-6)
  np.testing.assert_allclose(stats["adv/max"], a.max(), rtol=1e-6)
