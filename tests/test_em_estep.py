"""E-step estimates and curation against a scripted policy with known probabilities."""

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from aci_jax.em.estep import (CODE, COT, EStepConfig, QueryGroup, curate, decision_of,
                              estimate, reference_strategy)
from aci_jax.rollout.trajectory import Cell, Trajectory


def _traj(qid, mode, code, reward, k=0):
  cells = [Cell("print(1)", "1", "ok")] if code else []
  return Trajectory(prompt_index=qid, sample_index=k, mode=mode, prompt_ids=[1],
                    response_ids=[2, 3], logp=[-0.1, -0.2], source=[0, 0], cells=cells,
                    stop_reason="eos", text="", reward=float(reward))


def scripted_group(qid, rng, p_code, q_cot, q_code, n_native, k):
  """Native rollouts choose code with p_code; forced rollouts succeed with q_c."""
  native = []
  for i in range(n_native):
    code = rng.random() < p_code
    native.append(_traj(qid, "native", code, rng.random() < (q_code if code else q_cot), i))
  forced = {COT: [_traj(qid, "cot", False, rng.random() < q_cot, i) for i in range(k)],
            CODE: [_traj(qid, "code", True, rng.random() < q_code, i) for i in range(k)]}
  return QueryGroup(qid, native, forced)


def test_estimates_converge_to_the_scripted_probabilities():
  rng = np.random.default_rng(0)
  truth = [(0.1, 0.9, 0.95), (0.3, 0.05, 0.8), (0.7, 0.5, 0.5)]
  n = 4000
  for qid, (p, qc, qk) in enumerate(truth):
    est = estimate(scripted_group(qid, rng, p, qc, qk, n, n), EStepConfig())
    for got, want in ((est.pi[CODE], p), (est.q[COT], qc), (est.q[CODE], qk)):
      sigma = math.sqrt(want * (1 - want) / n)
      assert abs(got - want) < 4 * sigma + 1e-9, (qid, got, want)
    assert est.pi.sum() == pytest.approx(1.0)


def test_reference_strategy_formulas():
  pi, q = np.asarray([0.9, 0.1]), np.asarray([0.2, 1.0])
  # Paper form: softmax(alpha * pi * Q); by hand for alpha = 1 and 10.
  for alpha in (1.0, 10.0):
    a, b = math.exp(alpha * 0.18), math.exp(alpha * 0.1)
    np.testing.assert_allclose(reference_strategy(pi, q, alpha, "paper"), [a / (a + b),
                                                                          b / (a + b)])
  # Posterior form: pi*Q normalised = [0.18, 0.1] / 0.28.
  np.testing.assert_allclose(reference_strategy(pi, q, 1.0, "posterior"), [0.18 / 0.28,
                                                                          0.1 / 0.28])
  # alpha = inf: argmax of pi*Q, ties split evenly; alpha = 0: uniform.
  np.testing.assert_array_equal(reference_strategy(pi, q, math.inf, "paper"), [1.0, 0.0])
  np.testing.assert_array_equal(reference_strategy(pi, q, math.inf, "posterior"), [1.0, 0.0])
  np.testing.assert_array_equal(reference_strategy(np.asarray([0.5, 0.5]),
                                                   np.asarray([1.0, 1.0]), math.inf, "paper"),
                                [0.5, 0.5])
  np.testing.assert_allclose(reference_strategy(pi, q, 0.0, "paper"), [0.5, 0.5])
  # The paper form with pi(code) = 0 and code the only working mode: still 50/50, while the
  # posterior form gives code nothing (why pi_prior exists).
  np.testing.assert_allclose(reference_strategy(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0]),
                                                5.0, "paper"), [0.5, 0.5])
  np.testing.assert_allclose(reference_strategy(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0]),
                                                5.0, "posterior"), [0.5, 0.5])


def test_pi_prior_smooths_native_counts():
  rng = np.random.default_rng(1)
  g = scripted_group(0, rng, 0.0, 0.0, 1.0, 8, 8)
  assert estimate(g, EStepConfig()).pi[CODE] == 0.0
  assert estimate(g, EStepConfig(pi_prior=1.0)).pi[CODE] == pytest.approx(1 / 10)


def test_subsample_proportions_match_s_star():
  """Across many queries with the same s*, kept decisions follow s* (chi-square)."""
  rng = np.random.default_rng(2)
  cfg = EStepConfig(alpha=4.0, keep_per_query=4)
  groups = [scripted_group(i, rng, 0.5, 0.5, 0.9, 200, 16) for i in range(400)]
  cur = curate(groups, cfg, np.random.default_rng(3))
  kept_code = [0, 0]
  expected = np.zeros(2)
  for e in cur.estimates:
    if not e.dropped:
      expected += cfg.keep_per_query * e.s_star
  for t in cur.trajectories:
    kept_code[decision_of(t)] += 1
  assert sum(kept_code) == 400 * 4 and expected.sum() == pytest.approx(1600)
  assert chisquare(kept_code, expected).pvalue > 1e-3
  # The test can see a wrong strategy: uniform sampling would be rejected.
  assert chisquare(kept_code, [800, 800]).pvalue < 1e-3


def test_no_signal_queries_dropped_and_targets():
  rng = np.random.default_rng(4)
  fail = scripted_group(0, rng, 0.5, 0.0, 0.0, 8, 8)
  good = scripted_group(1, rng, 0.0, 0.0, 1.0, 8, 8)  # only code works, policy never codes
  cur = curate([fail, good], EStepConfig(alpha=math.inf, keep_per_query=6),
               np.random.default_rng(0))
  assert [e.dropped for e in cur.estimates] == [True, False]
  assert all(t.prompt_index == 1 for t in cur.trajectories)
  # pi(code) = 0 so pi*Q = [0, 0]: a tie, split evenly -> both decisions kept.
  np.testing.assert_array_equal(cur.estimates[1].s_star, [0.5, 0.5])
  rewards = np.asarray([t.reward for t in cur.trajectories])
  adv = np.asarray(cur.advantages)
  np.testing.assert_allclose(adv, (rewards - rewards.mean()) / (rewards.std() + 1e-6))
  # Decision term: correct rollouts of the chosen decision (argmax s* -> first of a tie: CoT,
  # whose rollouts all fail) -> nobody; with pi_prior the code decision wins.
  assert not any(cur.decision)
  cur2 = curate([good], EStepConfig(alpha=math.inf, keep_per_query=6, pi_prior=1.0),
                np.random.default_rng(0))
  assert all(decision_of(t) == CODE for t in cur2.trajectories)
  assert cur2.decision == [t.reward > 0 for t in cur2.trajectories] and any(cur2.decision)
  assert cur2.stats["estep/dropped"] == 0 and cur2.stats["estep/kept_rollouts"] == 6
