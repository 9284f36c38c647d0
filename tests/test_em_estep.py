"""E-step estimates and curation against a scripted policy with known probabilities."""

import collections
import logging
import math

import numpy as np
import pytest
from scipy.stats import chisquare

from aci_jax.em.estep import (CODE, COT, EStepConfig, QueryGroup, alpha_floor_warning,
                              capped_counts, chosen_decision, curate, decision_of, estep_stats,
                              estimate, family_stats, polarisation, reference_strategy)
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
  # Posterior form: pi*Q normalised = [0.18, 0.1] / 0.28; alpha is its exponent (tempered
  # posterior), never silently ignored: alpha = 2 gives [0.18^2, 0.1^2] normalised.
  np.testing.assert_allclose(reference_strategy(pi, q, 1.0, "posterior"), [0.18 / 0.28,
                                                                          0.1 / 0.28])
  np.testing.assert_allclose(reference_strategy(pi, q, 2.0, "posterior"),
                             [0.0324 / 0.0424, 0.01 / 0.0424])
  np.testing.assert_allclose(reference_strategy(pi, q, 0.0, "posterior"), [0.5, 0.5])
  # alpha = inf: argmax of pi*Q; alpha = 0: uniform.
  np.testing.assert_array_equal(reference_strategy(pi, q, math.inf, "paper"), [1.0, 0.0])
  np.testing.assert_array_equal(reference_strategy(pi, q, math.inf, "posterior"), [1.0, 0.0])
  np.testing.assert_allclose(reference_strategy(pi, q, 0.0, "paper"), [0.5, 0.5])
  # The paper form with pi(code) = 0 and code the only working mode: still 50/50, while the
  # posterior form gives code nothing (why pi_prior exists).
  np.testing.assert_allclose(reference_strategy(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0]),
                                                5.0, "paper"), [0.5, 0.5])
  np.testing.assert_allclose(reference_strategy(np.asarray([1.0, 0.0]), np.asarray([0.0, 1.0]),
                                                5.0, "posterior"), [0.5, 0.5])


def test_ties_are_broken_explicitly():
  """A tie in pi*Q goes to the higher Q_hat (pi(code) = 0, only code works: code), a tie in
  both to reasoning; alpha = inf is one-hot on that choice in either form."""
  cases = [((1.0, 0.0), (0.0, 1.0), CODE),  # pi*Q = [0, 0]; Q says code
           ((0.0, 1.0), (1.0, 0.0), COT),  # pi*Q = [0, 0]; Q says reasoning
           ((0.5, 0.5), (1.0, 1.0), COT),  # a full tie: reasoning
           ((0.5, 0.5), (0.6, 0.6), COT),
           ((0.2, 0.8), (1.0, 0.25), COT)]  # pi*Q = [0.2, 0.2]; Q says reasoning
  for pi, q, want in cases:
    assert chosen_decision(np.asarray(pi), np.asarray(q)) == want, (pi, q)
    for form in ("paper", "posterior"):
      np.testing.assert_array_equal(
          reference_strategy(np.asarray(pi), np.asarray(q), math.inf, form),
          [1.0, 0.0] if want == COT else [0.0, 1.0])


def test_q_score_and_code_cost():
  """score="q": pi is ignored, code must beat reasoning by more than code_cost; the run-J case
  (a reasoning query whose policy drifted to code, both modes always right) stays reasoning,
  where the paper's pi*Q follows the drift. Expected values worked by hand."""
  drifted = (np.asarray([0.1, 0.9]), np.asarray([1.0, 1.0]))
  assert chosen_decision(*drifted) == CODE  # pi*Q = [0.1, 0.9]
  assert chosen_decision(*drifted, score="q") == COT  # Q tie -> reasoning
  cases = [  # (Q_cot, Q_code, cost, want)
      (0.75, 1.0, 0.0, CODE),  # code better by one rollout in four
      (0.75, 1.0, 0.25, COT),  # ... which the cost exactly cancels: a tie, reasoning
      (0.5, 1.0, 0.25, CODE),  # better by two: code
      (0.0, 0.5, 0.25, CODE),  # only code works
      (0.0, 0.0, 0.25, COT)]
  for q_cot, q_code, cost, want in cases:
    q = np.asarray([q_cot, q_code])
    for pi in ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):  # pi must not matter
      assert chosen_decision(np.asarray(pi), q, "q", cost) == want, (q, cost, pi)
      np.testing.assert_array_equal(reference_strategy(np.asarray(pi), q, math.inf, "paper",
                                                       "q", cost),
                                    [1.0, 0.0] if want == COT else [0.0, 1.0])
  # Soft forms with the cost: paper = softmax(alpha * [Q_cot, Q_code - cost]);
  # posterior = max(score, 0)^alpha normalised.
  pi, q = np.asarray([0.5, 0.5]), np.asarray([0.5, 0.7])
  a, b = math.exp(4 * 0.5), math.exp(4 * 0.6)
  np.testing.assert_allclose(reference_strategy(pi, q, 4.0, "paper", "q", 0.1),
                             [a / (a + b), b / (a + b)])
  np.testing.assert_allclose(reference_strategy(pi, q, 2.0, "posterior", "q", 0.1),
                             [0.25 / 0.61, 0.36 / 0.61])
  np.testing.assert_allclose(reference_strategy(pi, np.asarray([0.5, 0.1]), 1.0, "posterior",
                                                "q", 0.2), [1.0, 0.0])
  # pi_q with a cost: pi * [Q_cot, Q_code - cost] = [0.5, 0.45] -> reasoning.
  assert chosen_decision(pi, np.asarray([1.0, 1.0]), "pi_q", 0.1) == COT
  with pytest.raises(ValueError, match="score"):
    EStepConfig(score="pq")
  with pytest.raises(ValueError, match="code_cost"):
    EStepConfig(code_cost=-0.1)


def test_curation_with_q_score_trains_reasoning_on_a_drifted_query():
  """Through `curate`: a query with native rollouts all code but forced rollouts all right in
  both modes keeps only reasoning rollouts (decision term on them) under score="q"."""
  rng = np.random.default_rng(3)
  g = scripted_group(0, rng, 1.0, 1.0, 1.0, 4, 4)
  for score, want in (("pi_q", CODE), ("q", COT)):
    cur = curate([g], EStepConfig(alpha=math.inf, pi_prior=0.5, keep_per_query=4, score=score),
                 np.random.default_rng(0))
    assert [decision_of(t) for t in cur.trajectories] == [want] * 4, score
    assert all(cur.decision)


def test_paper_preset_strategy_is_decisive():
  """configs/paper.py: a query only code solves, on which the policy never coded (8 native
  rollouts, none with code), gets s*(code) >= 0.9; one both modes solve where the policy
  reasons gets s*(cot) >= 0.9 (at alpha = 1, pi_prior = 0 both were within [0.27, 0.73])."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "paper.py"
  spec = importlib.util.spec_from_file_location("paper_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  from aci_jax.configuration import dataclass_from
  from aci_jax.em.loop import EMConfig

  cfg = dataclass_from(EMConfig, mod.get_config().em, name="em")
  rng = np.random.default_rng(5)
  only_code = scripted_group(0, rng, 0.0, 0.0, 1.0, cfg.native_samples, cfg.k_per_decision)
  both = scripted_group(1, rng, 0.0, 1.0, 1.0, cfg.native_samples, cfg.k_per_decision)
  assert estimate(only_code, cfg).s_star[CODE] >= 0.9
  assert estimate(both, cfg).s_star[COT] >= 0.9
  assert alpha_floor_warning(cfg.alpha, cfg.form) is None


def test_alpha_too_small_to_separate_is_warned(caplog):
  assert "0.27, 0.73" in alpha_floor_warning(1.0, "paper")
  assert alpha_floor_warning(3.0, "paper") is None
  assert alpha_floor_warning(math.inf, "paper") is None
  assert alpha_floor_warning(1.0, "posterior") is None
  rng = np.random.default_rng(6)
  groups = [scripted_group(i, rng, 0.5, 0.2, 0.9, 8, 8) for i in range(20)]
  with caplog.at_level(logging.WARNING, logger="aci_jax.em.estep"):
    cur = curate(groups, EStepConfig(alpha=1.0), np.random.default_rng(0))
  assert any("does not separate" in r.message for r in caplog.records)
  assert cur.stats["estep/undecided_fraction"] == 1.0
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="aci_jax.em.estep"):
    cur = curate(groups, EStepConfig(alpha=math.inf), np.random.default_rng(0))
  assert not caplog.records and cur.stats["estep/undecided_fraction"] == 0.0


def test_multinomial_counts_capped_at_k_with_redistribution():
  """keep 8 from K = 4 per decision: a draw of 6/2 becomes 4/4, so every query keeps 8
  (before: 4 + 2); a one-hot s* never borrows from the decision it gives no weight."""
  rng = np.random.default_rng(7)
  groups = [scripted_group(i, rng, 0.5, 0.5, 0.5, 8, 4) for i in range(50)]
  cur = curate(groups, EStepConfig(alpha=0.0, keep_per_query=8), np.random.default_rng(1))
  live = [e.query_id for e in cur.estimates if not e.dropped]
  per_q = collections.Counter(t.prompt_index for t in cur.trajectories)
  assert live and all(per_q[q] == 8 for q in live)
  np.testing.assert_array_equal(capped_counts([6, 2], [4, 4], [0.5, 0.5]), [4, 4])
  np.testing.assert_array_equal(capped_counts([0, 8], [4, 4], [0.0, 1.0]), [0, 4])
  np.testing.assert_array_equal(capped_counts([7, 1], [4, 2], [0.9, 0.1]), [4, 2])


def test_advantages_whitened_over_kept_or_all_forced():
  rng = np.random.default_rng(8)
  g = scripted_group(0, rng, 0.5, 0.3, 0.8, 8, 8)
  forced_r = np.asarray([t.reward for c in (COT, CODE) for t in g.forced[c]])
  assert 0 < forced_r.mean() < 1
  for whiten_set in ("kept", "forced"):
    cur = curate([g], EStepConfig(alpha=math.inf, keep_per_query=4, adv_whiten=whiten_set),
                 np.random.default_rng(0))
    r = np.asarray([t.reward for t in cur.trajectories])
    ref = r if whiten_set == "kept" else forced_r
    np.testing.assert_allclose(cur.advantages, (r - ref.mean()) / (ref.std() + 1e-6))
  # "none": the reward itself, so an all-right query still reinforces its rollouts.
  cur = curate([g], EStepConfig(alpha=math.inf, keep_per_query=4, adv_whiten="none"),
               np.random.default_rng(0))
  assert cur.advantages == [t.reward for t in cur.trajectories]
  right = scripted_group(1, rng, 0.5, 1.0, 1.0, 8, 8)  # every forced rollout right
  for whiten_set, expected in (("kept", 0.0), ("none", 1.0)):
    cur = curate([right], EStepConfig(alpha=math.inf, keep_per_query=4, adv_whiten=whiten_set),
                 np.random.default_rng(0))
    np.testing.assert_allclose(cur.advantages, [expected] * 4)
  with pytest.raises(ValueError, match="adv_whiten"):
    EStepConfig(adv_whiten="all")


def test_polarisation_of_the_native_code_rate():
  """Per-query native code rates 0, 0, 1/4, 1, 1 (by hand): 2 of 5 below 0.05, 2 above 0.95."""
  native = [(q, code, 0.0) for q, codes in enumerate(
      [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]) for code in codes]
  st = polarisation(native)
  assert st["estep/native_code_rate_below_05"] == pytest.approx(0.4)
  assert st["estep/native_code_rate_above_95"] == pytest.approx(0.4)
  assert st["estep/native_code_rate_query_hist"] == [2, 0, 1, 0, 0, 0, 0, 0, 0, 2]
  assert estep_stats(native, [], [])["estep/native_code_rate_below_05"] == pytest.approx(0.4)


def test_family_stats_count_queries_with_any_native_code():
  """By hand: mul queries 0 (no code), 1 (1 of 4 code) -> any-code 1/2, code rate 1/8;
  add query 2 (all code, 2 of 4 right) -> 1, 1, 0.5; query 3 has no family and is left out."""
  codes = {0: [0, 0, 0, 0], 1: [1, 0, 0, 0], 2: [1, 1, 1, 1], 3: [1, 1, 1, 1]}
  rewards = {0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [1, 0, 1, 0], 3: [1, 1, 1, 1]}
  native = [(q, bool(c), float(r)) for q in codes for c, r in zip(codes[q], rewards[q])]
  fam = {0: "mul", 1: "mul", 2: "add", 3: None}
  st = family_stats(native, fam.get)
  assert st == pytest.approx({
      "estep/family/mul/native_code_rate": 1 / 8, "estep/family/mul/native_accuracy": 3 / 8,
      "estep/family/mul/any_native_code": 0.5,
      "estep/family/add/native_code_rate": 1.0, "estep/family/add/native_accuracy": 0.5,
      "estep/family/add/any_native_code": 1.0})


def test_no_code_and_limit_records_are_not_code_use():
  t = _traj(0, "native", False, 1.0)
  t.cells = [Cell("", "Error: no ```python code block precedes this output block.", "no_code")]
  assert not t.used_code and decision_of(t) == COT
  t.cells = [Cell("", "Reached the maximum number of code executions", "limit")]
  assert not t.used_code
  t.cells.append(Cell("print(1)", "1", "ok"))
  assert t.used_code and decision_of(t) == CODE


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
  # pi(code) = 0 so pi*Q = [0, 0]: a tie, broken by Q_hat -> code (before: split evenly and
  # the decision term given to CoT, whose rollouts all fail, so nobody got it).
  np.testing.assert_array_equal(cur.estimates[1].s_star, [0.0, 1.0])
  assert all(decision_of(t) == CODE for t in cur.trajectories)
  assert cur.decision == [t.reward > 0 for t in cur.trajectories] and any(cur.decision)
  cur2 = curate([good], EStepConfig(alpha=math.inf, keep_per_query=6, pi_prior=1.0),
                np.random.default_rng(0))
  assert all(decision_of(t) == CODE for t in cur2.trajectories)
  assert cur2.decision == [t.reward > 0 for t in cur2.trajectories] and any(cur2.decision)
  assert cur2.stats["estep/dropped"] == 0 and cur2.stats["estep/kept_rollouts"] == 6
