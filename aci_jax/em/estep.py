"""E-step: estimate pi(c|x) and Q(x, c), form the reference strategy s*(c|x), curate rollouts.

Decisions: c = 0 is pure reasoning (CoT), c = 1 is code. For one query x:

  pi_hat(c|x)  fraction of *native* rollouts (no forcing) that made decision c
               (optionally smoothed with `pi_prior` pseudo-counts per decision)
  Q_hat(x, c)  mean reward of the K rollouts *forced* into decision c
  s*(c|x)      "paper" form (default):  softmax_c(alpha * pi_hat(c|x) * Q_hat(x, c))
               "posterior" form:        pi_hat * Q_hat / sum_c(pi_hat * Q_hat)
               alpha = inf:             one-hot argmax of pi_hat * Q_hat (ties split evenly)

The paper exponentiates the *product* (its Eq. 5), which still leans toward the mode the policy
already prefers when both modes work; the posterior form is offered as an ablation. Curation
draws `keep_per_query` rollouts per query: counts per decision ~ Multinomial(keep, s*), then
rollouts of that decision uniformly without replacement. Queries whose forced rollouts all fail
carry no signal and are dropped. Advantages are whitened per query over the kept rollouts, and
the decision term covers the correct kept rollouts of the chosen decision argmax_c s*(c|x).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from aci_jax.rollout.trajectory import Trajectory

COT, CODE = 0, 1
FORMS = ("paper", "posterior")


@dataclasses.dataclass(frozen=True)
class EStepConfig:
  alpha: float = 1.0  # inverse temperature of the reference strategy; math.inf = argmax
  form: str = "paper"  # "paper": softmax(alpha * pi * Q); "posterior": pi * Q normalised
  pi_prior: float = 0.0  # pseudo-counts added per decision to the native counts
  keep_per_query: int = 8  # rollouts kept per query for the M-step
  adv_eps: float = 1e-6  # delta in A = (r - mean) / (std + delta)
  drop_all_fail: bool = True

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(f"estep form must be one of {FORMS}, got {self.form!r}")
    if not self.alpha >= 0:
      raise ValueError(f"alpha must be >= 0 (or inf), got {self.alpha}")
    if self.keep_per_query < 1:
      raise ValueError("keep_per_query must be >= 1")


@dataclasses.dataclass
class QueryGroup:
  """All E-step rollouts of one query; rewards must be set."""

  query_id: int
  native: list[Trajectory]
  forced: dict[int, list[Trajectory]]  # decision -> K forced rollouts


@dataclasses.dataclass
class QueryEstimate:
  query_id: int
  pi: np.ndarray  # [2] pi_hat(c|x)
  q: np.ndarray  # [2] Q_hat(x, c); NaN where no forced rollout of c exists
  s_star: np.ndarray  # [2]
  dropped: bool


def decision_of(t: Trajectory) -> int:
  """The decision a trajectory made: forced mode if forced, else whether it ran code."""
  if t.mode == "code":
    return CODE
  if t.mode == "cot":
    return COT
  return CODE if t.used_code else COT


def _reward(t: Trajectory) -> float:
  if t.reward is None:
    raise ValueError(f"trajectory of query {t.prompt_index} has no reward; grade it first")
  return float(t.reward)


def estimate_pi(native: Sequence[Trajectory], prior: float = 0.0) -> np.ndarray:
  counts = np.full(2, prior, np.float64)
  for t in native:
    counts[decision_of(t)] += 1
  total = counts.sum()
  return counts / total if total > 0 else np.full(2, 0.5)


def estimate_q(forced: dict[int, Sequence[Trajectory]]) -> np.ndarray:
  return np.asarray([np.mean([_reward(t) for t in forced.get(c, [])])
                     if forced.get(c) else np.nan for c in (COT, CODE)])


def reference_strategy(pi: np.ndarray, q: np.ndarray, alpha: float, form: str) -> np.ndarray:
  """s*(c|x) for c in (CoT, code); see the module docstring. NaN Q counts as 0."""
  score = np.asarray(pi, np.float64) * np.nan_to_num(np.asarray(q, np.float64))
  if form == "posterior":
    total = score.sum()
    if math.isinf(alpha):
      pass  # posterior with alpha = inf is the same argmax as the paper form
    elif total > 0:
      return score / total
    else:
      return np.full(2, 0.5)
  if math.isinf(alpha):
    best = score == score.max()
    return best / best.sum()
  z = alpha * score
  z = np.exp(z - z.max())
  return z / z.sum()


def estimate(group: QueryGroup, cfg: EStepConfig) -> QueryEstimate:
  pi = estimate_pi(group.native, cfg.pi_prior)
  q = estimate_q(group.forced)
  s = reference_strategy(pi, q, cfg.alpha, cfg.form)
  forced = [t for ts in group.forced.values() for t in ts]
  dropped = cfg.drop_all_fail and not any(_reward(t) > 0 for t in forced)
  return QueryEstimate(group.query_id, pi, q, s, dropped)


@dataclasses.dataclass
class Curated:
  """Kept rollouts with per-rollout training targets (aligned lists)."""

  trajectories: list[Trajectory]
  advantages: list[float]
  decision: list[bool]  # gets the lambda-weighted decision term
  estimates: list[QueryEstimate]
  stats: dict


def whiten(rewards: Sequence[float], eps: float) -> np.ndarray:
  r = np.asarray(rewards, np.float64)
  return (r - r.mean()) / (r.std() + eps)


def curate(groups: Sequence[QueryGroup], cfg: EStepConfig,
           rng: np.random.Generator | Callable[[int], np.random.Generator]) -> Curated:
  """Runs the estimates and the s*-weighted subsampling for every query (host, numpy).

  `rng` is one generator for all queries, or `query_id -> generator`: with one generator per
  query the draws of a query do not depend on which other queries share the call (so hosts
  that each curate their own queries draw what one process would).
  """
  kept, adv, dec, ests = [], [], [], []
  for g in groups:
    est = estimate(g, cfg)
    g_rng = rng(g.query_id) if callable(rng) else rng
    ests.append(est)
    if est.dropped:
      continue
    counts = g_rng.multinomial(cfg.keep_per_query, est.s_star)
    chosen = int(np.argmax(est.s_star))
    picked: list[Trajectory] = []
    for c in (COT, CODE):
      pool = list(g.forced.get(c, []))
      n = min(int(counts[c]), len(pool))
      idx = g_rng.choice(len(pool), size=n, replace=False) if n else []
      picked += [pool[i] for i in idx]
    if not picked:
      continue
    a = whiten([_reward(t) for t in picked], cfg.adv_eps)
    for t, ai in zip(picked, a):
      kept.append(t)
      adv.append(float(ai))
      dec.append(bool(_reward(t) > 0 and decision_of(t) == chosen))
  stats = estep_stats(native_outcomes(groups), ests, kept)
  return Curated(kept, adv, dec, ests, stats)


def native_outcomes(groups: Sequence[QueryGroup]) -> list[tuple[int, bool, float]]:
  """(query id, used code, reward) of every native rollout: what the statistics need."""
  return [(g.query_id, t.used_code, _reward(t)) for g in groups for t in g.native]


def estep_stats(native: Sequence[tuple[int, bool, float]], ests: Sequence[QueryEstimate],
                kept: Sequence[Trajectory]) -> dict:
  """Scalars and histograms for the metrics log; `native` from `native_outcomes`."""
  q = np.asarray([e.q for e in ests]) if ests else np.zeros((0, 2))
  # s* of dropped queries is a meaningless tie; the strategy statistics cover kept queries.
  live = [e.s_star for e in ests if not e.dropped]
  s = np.asarray(live) if live else np.zeros((0, 2))
  bins = np.linspace(0, 1, 11)
  out = {
      "estep/queries": len(ests),
      "estep/dropped": int(sum(e.dropped for e in ests)),
      "estep/kept_rollouts": len(kept),
      "estep/kept_code_fraction": (float(np.mean([decision_of(t) == CODE for t in kept]))
                                   if kept else 0.0),
      "estep/native_code_rate": (float(np.mean([c for _, c, _ in native])) if native else 0.0),
      "estep/native_accuracy": (float(np.mean([r for _, _, r in native])) if native else 0.0),
  }
  for c, name in ((COT, "cot"), (CODE, "code")):
    if len(q):
      qc = q[:, c][~np.isnan(q[:, c])]
      out[f"estep/q_{name}_mean"] = float(qc.mean()) if len(qc) else 0.0
      out[f"estep/q_{name}_hist"] = np.histogram(qc, bins)[0].tolist()
    if len(s):
      out[f"estep/s_{name}_mean"] = float(s[:, c].mean())
      out[f"estep/s_{name}_hist"] = np.histogram(s[:, c], bins)[0].tolist()
  return out
