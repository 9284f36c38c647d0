"""The registered EM algorithms: each one's rollout requests, curation and M-step loss on a fixed
set of graded trajectories, against values worked out by hand from the method (docs/em.md);
a new algorithm is one registered class; an unknown name is a one-line ConfigError."""

import types

import ml_collections
import numpy as np
import pytest

from aci_jax import tool_format
from aci_jax.em import algorithms
from aci_jax.em.loop import EMConfig, EMLoop, Problem
from aci_jax.rollout.trajectory import Cell, Trajectory
from aci_jax.configuration import ConfigError, dataclass_from

NAMES = ("autocode", "em_no_decision", "grpo", "rejection_sft")
PREFIX = [9, 9]  # the tokenised code prefix


def _t(q, mode, k, reward, code=False):
  cells = [Cell("print(1)", "1", "ok")] if code or mode == "code" else []
  return Trajectory(prompt_index=q, sample_index=k, mode=mode, prompt_ids=[1],
                    response_ids=[2, 3], logp=[-0.1, -0.2], source=[0, 0], cells=cells,
                    stop_reason="eos", text="", reward=float(reward))


# Two native (N) and two forced rollouts per decision (cot, code) per query; rewards chosen so
# that by hand, at alpha = inf, pi_prior = 0, keep_per_query = 2:
#   q0: N cot 1, code 0 -> pi = (.5, .5); cot 1, 0; code 0, 0 -> Q = (.5, 0): chooses cot,
#       keeps both cot rollouts, whitened (1, 0) -> (+1, -1); the correct one gets the decision.
#   q1: N code 1, code 1 -> pi = (0, 1); cot 0, 0; code 1, 0 -> Q = (0, .5): chooses code,
#       keeps both code rollouts, (+1, -1); decision on the correct one.
#   q2: N cot 0, code 1; every forced rollout fails -> dropped.
#   q3: N cot 1, cot 1 -> pi = (1, 0); all forced correct -> Q = (1, 1): chooses cot, keeps
#       both cot rollouts, rewards equal -> advantages 0; both get the decision.
REWARDS = {0: ((("native", 0, 1), ("native", 1, 0, True)), (1, 0), (0, 0)),
           1: ((("native", 0, 1, True), ("native", 1, 1, True)), (0, 0), (1, 0)),
           2: ((("native", 0, 0), ("native", 1, 1, True)), (0, 0), (0, 0)),
           3: ((("native", 0, 1), ("native", 1, 1)), (1, 1), (1, 1))}


def _graded():
  out = []
  for q, (native, cot, code) in REWARDS.items():
    out += [_t(q, *n) for n in native]
    out += [_t(q, "cot", k, r) for k, r in enumerate(cot)]
    out += [_t(q, "code", k, r) for k, r in enumerate(code)]
  return out


# (query, mode, sample index, advantage, decision flag) of every kept rollout.
E_STEP = {(0, "cot", 0, 1.0, True), (0, "cot", 1, -1.0, False),
          (1, "code", 0, 1.0, True), (1, "code", 1, -1.0, False),
          (3, "cot", 0, 0.0, True), (3, "cot", 1, 0.0, True)}
EXPECTED = {
    "autocode": E_STEP,
    "em_no_decision": {(q, m, k, a, False) for q, m, k, a, _ in E_STEP},
    # Native rollouts of the queries whose rewards differ (q0, q2), whitened per query.
    "grpo": {(0, "native", 0, 1.0, False), (0, "native", 1, -1.0, False),
             (2, "native", 0, -1.0, False), (2, "native", 1, 1.0, False)},
    # The correct native rollouts, advantage 1 (plain SFT).
    "rejection_sft": {(0, "native", 0, 1.0, False), (1, "native", 0, 1.0, False),
                      (1, "native", 1, 1.0, False), (2, "native", 1, 1.0, False),
                      (3, "native", 0, 1.0, False), (3, "native", 1, 1.0, False)},
}


def _loop(algorithm, **em):
  cfg = EMConfig(algorithm=algorithm, native_samples=2, k_per_decision=2, keep_per_query=2,
                 alpha=float("inf"), **em)
  tok = types.SimpleNamespace(encode={"```python\n": PREFIX}.__getitem__)
  engine = types.SimpleNamespace(cfg=types.SimpleNamespace(max_prompt_tokens=64),
                                 tool_format=tool_format.get())
  problems = [Problem(f"p{i}", "1") for i in range(6)]
  return EMLoop(cfg, None, engine, None, tok, problems, lambda text: [100 + int(text[1:])])


def test_the_four_algorithms_are_registered():
  assert tuple(algorithms.ALGORITHMS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_requests(name):
  reqs = _loop(name).requests([5, 2], iteration=3)
  got = [(r.prompt_index, r.prompt_ids, r.mode, r.sample_index, r.ban, r.prefix_ids)
         for r in reqs]
  def want(q):
    ids = [100 + q]
    if name in ("autocode", "em_no_decision"):
      # 2 native, 2 forced reasoning (fence banned), 2 forced code (prefixed).
      return ([(q, ids, "native", 3_000_000 + s, False, []) for s in range(2)] +
              [(q, ids, "cot", 3_100_000 + s, True, []) for s in range(2)] +
              [(q, ids, "code", 3_200_000 + s, False, PREFIX) for s in range(2)])
    return [(q, ids, "native", 3_000_000 + s, False, []) for s in range(6)]  # 2 + 2 * 2

  assert got == want(5) + want(2)
  assert all(r.meta == {"iteration": 3} for r in reqs)


@pytest.mark.parametrize("name", NAMES)
def test_curation(name):
  loop = _loop(name)
  rng = lambda q: np.random.default_rng([0, 7, q])
  kept, adv, dec, ests, native = loop.curate(_graded(), rng)
  got = {(t.prompt_index, t.mode, t.sample_index, round(a, 4), d)
         for t, a, d in zip(kept, adv, dec)}
  assert len(kept) == len(EXPECTED[name]) and got == EXPECTED[name]
  # Native outcomes (query, used code, reward) feed the statistics of every algorithm.
  assert native == [(q, len(n) > 3 and n[3], float(n[2])) for q, (ns, _, _) in REWARDS.items()
                    for n in ns]
  if name in ("autocode", "em_no_decision"):
    assert [e.dropped for e in ests] == [False, False, True, False]
    assert [e.pi.tolist() for e in ests] == [[.5, .5], [0, 1], [.5, .5], [1, 0]]
    assert [e.s_star.tolist() for e in ests] == [[1, 0], [0, 1], [1, 0], [1, 0]]
  else:
    assert ests == []


@pytest.mark.parametrize("name, policy, coef", [("autocode", "tis", 0.7),
                                                ("em_no_decision", "tis", 0.0),
                                                ("grpo", "ppo_clip", 0.0),
                                                ("rejection_sft", "sft_nll", 0.0)])
def test_loss(name, policy, coef):
  from aci_jax.em.modes import _loss_for

  c = ml_collections.ConfigDict({
      "em": {"algorithm": name},
      "loss": {"policy": "tis", "decision_coef": 0.7, "aggregation": "seq_mean"}})
  loss = _loss_for(c)
  assert (loss.policy, loss.decision_coef, loss.aggregation) == (policy, coef, "seq_mean")


def test_an_ablation_is_one_registered_class(monkeypatch):
  monkeypatch.setattr(algorithms, "ALGORITHMS", dict(algorithms.ALGORITHMS))

  @algorithms.register("autocode_more_native")
  class MoreNative(algorithms.AutoCode):
    def rollouts(self):
      native, forced = super().rollouts()
      return native + 1, forced

  loop = _loop("autocode_more_native")
  assert [r.mode for r in loop.requests([0], 0)].count("native") == 3
  assert algorithms.get("autocode_more_native") is MoreNative
  with pytest.raises(ValueError, match="already registered"):
    algorithms.register("autocode")(MoreNative)


@pytest.mark.parametrize("name, message", [
    ("ppo_magic", r"config\.em: algorithm must be one of \('autocode', 'em_no_decision', "
                  r"'grpo', 'rejection_sft'\), got 'ppo_magic'"),
    ("rft", r"config\.em: em\.algorithm 'rft' is now 'rejection_sft'")])
def test_unknown_algorithm_is_a_one_line_config_error(name, message):
  with pytest.raises(ConfigError, match=message) as e:
    dataclass_from(EMConfig, {"algorithm": name}, name="em")
  assert "\n" not in str(e.value)


def test_one_set_of_estep_defaults():
  """The E-step knobs of `config.em` are the E-step's own fields, not copies."""
  from aci_jax.em.estep import EStepConfig

  em, estep = EMConfig(), EStepConfig()
  for f in ("alpha", "form", "pi_prior", "keep_per_query", "adv_whiten"):
    assert getattr(em, f) == getattr(estep, f)
  assert isinstance(em, EStepConfig)
