"""E-step: estimate pi(c|x) and Q(x, c), form the reference strategy s*(c|x), curate rollouts.

Decisions: c = 0 is pure reasoning (CoT), c = 1 is code. For one query x:

  pi_hat(c|x)  fraction of *native* rollouts (no forcing) that made decision c
               (optionally smoothed with `pi_prior` pseudo-counts per decision)
  Q_hat(x, c)  mean reward of the K rollouts *forced* into decision c
  s*(c|x)      "paper" form (default):  softmax_c(alpha * pi_hat(c|x) * Q_hat(x, c))
               "posterior" form:        (pi_hat * Q_hat)^alpha normalised (alpha = 1: the
                                        plain posterior; alpha = 0: uniform)
               alpha = inf (either form): one-hot on the chosen decision (below)

The paper exponentiates the *product* (its Eq. 5), which still leans toward the mode the policy
already prefers when both modes work; the posterior form is offered as an ablation. Since
pi_hat * Q_hat is in [0, 1], the paper form at alpha = 1 keeps s* within [0.27, 0.73] whatever
the estimates: `alpha_floor_warning` and the `estep/undecided_fraction` statistic say when
alpha is too small to separate the decisions.

The score inside s* is the paper's pi_hat * Q_hat (`score="pi_q"`, default) or Q_hat alone
(`score="q"`: "reason when you can, code when you must", the rule selection accuracy grades
against). Both use Q_hat(x, code) - `code_cost`, a price on the tool call (default 0): with
`score="q"`, code must beat reasoning by more than code_cost (e.g. 0.25 = one forced rollout in
four) to be chosen. Why "q" exists: under pi_q, once a reasoning query's native rollouts drift to
code (pi_hat(code) -> 1), argmax pi * Q picks code whenever code is as accurate as reasoning, and
the decision term then trains the drift in (docs/toy.md, run J: `add` flipped to code at 1.00
accuracy in both modes).

The chosen decision of a query (its decision-term target, and the one-hot of alpha = inf) is
argmax_c of the score with ties broken explicitly: the higher (cost-adjusted) Q_hat wins (so a
query whose policy never tried code, pi_hat(code) = 0, still picks code when only code works),
and a tie in both goes to reasoning (no tool call when both do equally well).

Curation draws `keep_per_query` rollouts per query: counts per decision ~ Multinomial(keep, s*),
capped at the K forced rollouts of that decision with the excess moved to the other decision
when s* gives it any weight; then rollouts of each decision uniformly without replacement.
Queries whose forced rollouts all fail carry no signal and are dropped. Advantages are whitened
per query, over the kept rollouts (`adv_whiten="kept"`) or over all forced rollouts of the query
(`"forced"`), or not at all (`"none"`: advantage = reward); the decision term covers the correct
kept rollouts of the chosen decision.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Sequence

import numpy as np

from aci_jax.rollout.trajectory import Trajectory

log = logging.getLogger(__name__)

COT, CODE = 0, 1
FORMS = ("paper", "posterior")
SCORES = ("pi_q", "q")
# "none": the advantage is the reward itself (1 right, 0 wrong): the kept right rollouts are
# reinforced even where every kept rollout is right, which whitening turns into zero signal
# (a reasoning family the policy already solves then gets no gradient that keeps it solved).
WHITEN_SETS = ("kept", "forced", "none")
# s* must reach this for a query to count as decided (estep/undecided_fraction); the paper form
# can only get there when alpha * pi_hat * Q_hat differ by ln(9).
DECIDED = 0.9
ADV_EPS = 1e-6  # delta in A = (r - mean) / (std + delta)


@dataclasses.dataclass(frozen=True)
class EStepConfig:
  """The E-step's knobs and their defaults; `EMConfig` (aci_jax/em/loop.py) extends them with
  the loop's, so `config.em` sets both and `curate` takes either."""

  alpha: float = 1.0  # inverse temperature of the reference strategy; math.inf = argmax
  form: str = "paper"  # "paper": softmax(alpha * pi * Q); "posterior": pi * Q normalised
  pi_prior: float = 0.0  # pseudo-counts added per decision to the native counts
  score: str = "pi_q"  # "pi_q": pi_hat * Q_hat (paper); "q": Q_hat alone (module docstring)
  code_cost: float = 0.0  # subtracted from Q_hat(x, code) in the score: the price of a tool call
  keep_per_query: int = 8  # rollouts kept per query for the M-step
  adv_whiten: str = "kept"  # mean/std over the kept rollouts, or over all forced ones

  def __post_init__(self):
    if self.form not in FORMS:
      raise ValueError(f"estep form must be one of {FORMS}, got {self.form!r}")
    if self.adv_whiten not in WHITEN_SETS:
      raise ValueError(f"adv_whiten must be one of {WHITEN_SETS}, got {self.adv_whiten!r}")
    if self.score not in SCORES:
      raise ValueError(f"estep score must be one of {SCORES}, got {self.score!r}")
    if not 0 <= self.code_cost < 1:
      raise ValueError(f"code_cost must be in [0, 1) (rewards are 0/1), got {self.code_cost}")
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


def decision_scores(pi: np.ndarray, q: np.ndarray, score: str = "pi_q",
                    code_cost: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """(score, cost-adjusted Q_hat) per decision; NaN Q counts as 0 (module docstring)."""
  qq = np.nan_to_num(np.asarray(q, np.float64)) - np.asarray([0.0, code_cost])
  if score == "q":
    return qq, qq
  if score == "pi_q":
    return np.asarray(pi, np.float64) * qq, qq
  raise ValueError(f"estep score must be one of {SCORES}, got {score!r}")


def chosen_decision(pi: np.ndarray, q: np.ndarray, score: str = "pi_q",
                    code_cost: float = 0.0) -> int:
  """argmax_c of the score, ties to the higher adjusted Q_hat, then to reasoning."""
  sc, qq = decision_scores(pi, q, score, code_cost)
  # Lexicographic (score, Q, prefer CoT): CoT = 0 wins a full tie by coming first.
  return max((COT, CODE), key=lambda c: (sc[c], qq[c], -c))


def reference_strategy(pi: np.ndarray, q: np.ndarray, alpha: float, form: str,
                       score: str = "pi_q", code_cost: float = 0.0) -> np.ndarray:
  """s*(c|x) for c in (CoT, code); see the module docstring. NaN Q counts as 0."""
  sc, _ = decision_scores(pi, q, score, code_cost)
  if math.isinf(alpha):
    out = np.zeros(2)
    out[chosen_decision(pi, q, score, code_cost)] = 1.0
    return out
  if form == "posterior":
    if alpha == 0:
      return np.full(2, 0.5)
    w = np.maximum(sc, 0.0) ** alpha  # a cost can push code's score below 0: weight 0
    total = w.sum()
    return w / total if total > 0 else np.full(2, 0.5)
  z = alpha * sc
  z = np.exp(z - z.max())
  return z / z.sum()


def alpha_floor_warning(alpha: float, form: str) -> str | None:
  """A warning when the paper form's alpha cannot separate decisions for any query: with
  pi_hat * Q_hat in [0, 1], s* never exceeds sigmoid(alpha), so below alpha = ln 9 no query can
  reach s* = 0.9 (alpha = 1: s* in [0.27, 0.73], curation close to 50/50)."""
  if form != "paper" or math.isinf(alpha) or alpha >= math.log(DECIDED / (1 - DECIDED)):
    return None
  hi = 1 / (1 + math.exp(-alpha))
  return (f"em.alpha={alpha:g} with the paper form: s* = softmax(alpha * pi * Q) stays within "
          f"[{1 - hi:.2f}, {hi:.2f}] for every query, so curation is close to uniform whatever "
          f"the estimates; use alpha >= {math.log(DECIDED / (1 - DECIDED)):.1f} or inf")


def estimate(group: QueryGroup, cfg: EStepConfig) -> QueryEstimate:
  pi = estimate_pi(group.native, cfg.pi_prior)
  q = estimate_q(group.forced)
  s = reference_strategy(pi, q, cfg.alpha, cfg.form, cfg.score, cfg.code_cost)
  forced = [t for ts in group.forced.values() for t in ts]
  dropped = not any(_reward(t) > 0 for t in forced)
  return QueryEstimate(group.query_id, pi, q, s, dropped)


@dataclasses.dataclass
class Curated:
  """Kept rollouts with per-rollout training targets (aligned lists)."""

  trajectories: list[Trajectory]
  advantages: list[float]
  decision: list[bool]  # gets the lambda-weighted decision term
  estimates: list[QueryEstimate]
  stats: dict


def whiten(rewards: Sequence[float], ref: Sequence[float] | None = None) -> np.ndarray:
  """(r - mean) / (std + ADV_EPS), mean and std over `ref` (default: the rewards themselves)."""
  r = np.asarray(rewards, np.float64)
  ref = r if ref is None else np.asarray(ref, np.float64)
  return (r - ref.mean()) / (ref.std() + ADV_EPS)


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
    pools = [list(g.forced.get(c, [])) for c in (COT, CODE)]
    counts = capped_counts(counts, [len(p) for p in pools], est.s_star)
    chosen = chosen_decision(est.pi, est.q, cfg.score, cfg.code_cost)
    picked: list[Trajectory] = []
    for c in (COT, CODE):
      pool, n = pools[c], int(counts[c])
      idx = g_rng.choice(len(pool), size=n, replace=False) if n else []
      picked += [pool[i] for i in idx]
    if not picked:
      continue
    rewards = [_reward(t) for t in picked]
    if cfg.adv_whiten == "forced":
      a = whiten(rewards, [_reward(t) for p in pools for t in p])
    elif cfg.adv_whiten == "none":
      a = np.asarray(rewards, np.float64)
    else:
      a = whiten(rewards)
    for t, ai in zip(picked, a):
      kept.append(t)
      adv.append(float(ai))
      dec.append(bool(_reward(t) > 0 and decision_of(t) == chosen))
  live = [e for e in ests if not e.dropped]
  if live and cfg.form == "paper" and not math.isinf(cfg.alpha):
    # The largest separation any query could get this iteration: below ln 9 no query's s*
    # reaches 0.9, and curation is close to uniform whatever Q_hat says.
    top = cfg.alpha * max(float(np.max(e.pi * np.nan_to_num(e.q))) for e in live)
    if top < math.log(DECIDED / (1 - DECIDED)):
      log.warning("E-step: alpha * max(pi_hat * Q_hat) = %.2f < ln 9 over %d queries: s* < 0.9 "
                  "everywhere, the reference strategy does not separate the decisions "
                  "(raise em.alpha, or inf)", top, len(live))
  stats = estep_stats(native_outcomes(groups), ests, kept)
  return Curated(kept, adv, dec, ests, stats)


def capped_counts(counts, sizes, s_star) -> np.ndarray:
  """Multinomial counts capped at each decision's pool size, the excess moved to the other
  decision where s* gives it weight (so a query keeps `keep` rollouts when it can)."""
  counts = np.asarray(counts, np.int64).copy()
  for c in (COT, CODE):
    excess = int(counts[c]) - int(sizes[c])
    if excess > 0:
      counts[c] = sizes[c]
      other = 1 - c
      if s_star[other] > 0:
        counts[other] = min(int(sizes[other]), int(counts[other]) + excess)
  return counts


def native_outcomes(groups: Sequence[QueryGroup]) -> list[tuple[int, bool, float]]:
  """(query id, used code, reward) of every native rollout: what the statistics need."""
  return [(g.query_id, t.used_code, _reward(t)) for g in groups for t in g.native]


def polarisation(native: Sequence[tuple[int, bool, float]]) -> dict:
  """Per-query native code rate: its 10-bin histogram (counts of queries) and the mass of
  queries that (almost) never code (< 0.05) or (almost) always do (> 0.95) -- the measure of
  the paper's claim that RL polarises the decision."""
  by_q: dict[int, list[bool]] = {}
  for qid, code, _ in native:
    by_q.setdefault(qid, []).append(bool(code))
  rates = np.asarray([np.mean(v) for v in by_q.values()], np.float64)
  if not len(rates):
    return {}
  return {
      "estep/native_code_rate_query_hist": np.histogram(rates, np.linspace(0, 1, 11))[0].tolist(),
      "estep/native_code_rate_below_05": float(np.mean(rates < 0.05)),
      "estep/native_code_rate_above_95": float(np.mean(rates > 0.95)),
  }


def family_stats(native: Sequence[tuple[int, bool, float]],
                 family_of: Callable[[int], str | None]) -> dict:
  """Per family (`family_of(query id)`, None = no family): the native code rate, the native
  accuracy, and the fraction of queries with at least one native code rollout -- what plain RL
  can learn code from at all (issue 16: a code-needing query none of whose native rollouts
  codes gives GRPO no code sample to reinforce)."""
  by_fam: dict[str, dict[int, list[tuple[bool, float]]]] = {}
  for qid, code, reward in native:
    fam = family_of(qid)
    if fam is not None:
      by_fam.setdefault(str(fam), {}).setdefault(qid, []).append((bool(code), float(reward)))
  out = {}
  for fam, queries in sorted(by_fam.items()):
    rollouts = [o for v in queries.values() for o in v]
    out[f"estep/family/{fam}/native_code_rate"] = float(np.mean([c for c, _ in rollouts]))
    out[f"estep/family/{fam}/native_accuracy"] = float(np.mean([r for _, r in rollouts]))
    out[f"estep/family/{fam}/any_native_code"] = float(
        np.mean([any(c for c, _ in v) for v in queries.values()]))
  return out


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
      # Queries whose s* does not reach 0.9 for either decision (alpha too small to separate).
      "estep/undecided_fraction": (float(np.mean(s.max(axis=1) < DECIDED)) if len(s) else 0.0),
  }
  out.update(polarisation(native))
  for c, name in ((COT, "cot"), (CODE, "code")):
    if len(q):
      qc = q[:, c][~np.isnan(q[:, c])]
      out[f"estep/q_{name}_mean"] = float(qc.mean()) if len(qc) else 0.0
      out[f"estep/q_{name}_hist"] = np.histogram(qc, bins)[0].tolist()
    if len(s):
      out[f"estep/s_{name}_mean"] = float(s[:, c].mean())
      out[f"estep/s_{name}_hist"] = np.histogram(s[:, c], bins)[0].tolist()
  return out
