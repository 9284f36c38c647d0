"""EM algorithms (the paper's method and its ablations), registered by name.

`config.em.algorithm` picks one. An algorithm owns the three steps the ablations differ in;
everything else (queries, sampling, grading, the multi-host gather, M-step batches, checkpoints)
is the shared `EMLoop`:

  rollouts        per query: how many native rollouts, and how many forced into each decision
  curation        which graded rollouts the M-step trains on, their advantages, and which rows
                  get the decision term
  loss            the M-step policy term (None = config.loss.policy) and whether the decision
                  term (lambda * decision_ce) is on; `decision_term = False` turns it off in the
                  loss and clears every row's decision flag, both here

  autocode        native_samples native + K forced per decision; s*-curated forced rollouts
                  (estep.curate); config.loss.policy + lambda * decision_ce
  em_no_decision  autocode without the decision term
  grpo            "standard RL": native_samples + 2K native rollouts, kept for queries whose
                  rewards differ, advantages whitened per query; GRPO's clipped surrogate
                  against the behaviour policy (`ppo_clip`)
  rejection_sft   rejection-sampling fine-tuning: the same native budget, the correct rollouts,
                  plain SFT (`sft_nll`)

The baselines draw `native_samples + 2 * k_per_decision` native rollouts where the E-step draws
`native_samples` native and `2 * k_per_decision` forced ones: the same rollout budget per query.

Adding one: subclass `Algorithm` (or an existing algorithm), set what differs, decorate it with
`@register("name")`; `config.em.algorithm=name` then runs it (docs/em.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from aci_jax.em.estep import (Curated, QueryGroup, alpha_floor_warning, curate, estep_stats,
                              native_outcomes, whiten)
from aci_jax.rollout import Request

if TYPE_CHECKING:
  from aci_jax.em.loop import EMConfig

ALGORITHMS: dict[str, type[Algorithm]] = {}

# Sample indices are disjoint per mode and per iteration, so rollout keys never repeat.
_ITERATION_STRIDE = 1_000_000
_MODE_OFFSET = {"native": 0, "cot": 100_000, "code": 200_000}


def register(name: str):
  """Class decorator: `@register("name")` makes an `Algorithm` subclass `em.algorithm=name`."""

  def wrap(cls):
    if name in ALGORITHMS:
      raise ValueError(f"EM algorithm {name!r} is already registered")
    cls.name = name
    ALGORITHMS[name] = cls
    return cls

  return wrap


def get(name: str) -> type[Algorithm]:
  """The registered class; ValueError (one line, naming the choices) for an unknown name."""
  if name == "rft":
    raise ValueError("em.algorithm 'rft' is now 'rejection_sft' (SFT on the correct native "
                     "rollouts; the paper's SFT-only row is the warm-up checkpoint)")
  if name not in ALGORITHMS:
    raise ValueError(f"algorithm must be one of {tuple(ALGORITHMS)}, got {name!r}")
  return ALGORITHMS[name]


class Algorithm:
  """One EM algorithm over the knobs of `cfg` (an `EMConfig`). Subclasses set the class
  attributes and implement `select`; `requests`, `curate` and `loss_overrides` apply them."""

  name = ""
  forced = False  # K rollouts forced into each decision (else 2K more native ones)
  policy: str | None = None  # the M-step policy term; None = config.loss.policy
  decision_term = False  # lambda * decision_ce on the rows `select` flags

  def __init__(self, cfg: EMConfig):
    self.cfg = cfg

  # ------------------------------------------------------------------------ rollouts

  def rollouts(self) -> tuple[int, int]:
    """(native rollouts, rollouts forced into each decision) per query."""
    c = self.cfg
    if self.forced:
      return c.native_samples, c.k_per_decision
    return c.native_samples + 2 * c.k_per_decision, 0

  def requests(self, prompt_ids: list[int], query: int, iteration: int,
               code_prefix_ids: list[int], code_prompt_ids: list[int] | None = None
               ) -> list[Request]:
    """The rollouts of one query: native ones, then forced reasoning (the fence banned), then
    forced code (the response starts with `code_prefix_ids`; sampled from `code_prompt_ids`,
    the prompt that asks for code, when given, and marked `asked`)."""
    native, forced = self.rollouts()
    meta = {"iteration": iteration}
    base = iteration * _ITERATION_STRIDE
    out = [Request(prompt_ids, query, base + _MODE_OFFSET["native"] + s, "native", meta=meta)
           for s in range(native)]
    out += [Request(prompt_ids, query, base + _MODE_OFFSET["cot"] + s, "cot", ban=True,
                    meta=meta) for s in range(forced)]
    code_meta = meta if code_prompt_ids is None else {**meta, "asked": True}
    out += [Request(code_prompt_ids or prompt_ids, query, base + _MODE_OFFSET["code"] + s,
                    "code", prefix_ids=code_prefix_ids, meta=code_meta) for s in range(forced)]
    return out

  # ------------------------------------------------------------------------ curation

  def select(self, groups: Sequence[QueryGroup],
             rng: Callable[[int], np.random.Generator]) -> Curated:
    """The kept rollouts with advantages and decision flags; `rng(query)` is that query's
    generator (so a query's draws do not depend on which host curates it)."""
    raise NotImplementedError

  def curate(self, groups: Sequence[QueryGroup],
             rng: Callable[[int], np.random.Generator]) -> Curated:
    cur = self.select(groups, rng)
    if not self.decision_term:
      cur.decision = [False] * len(cur.decision)
    return cur

  # ------------------------------------------------------------------------ loss

  def loss_overrides(self) -> dict:
    """What this algorithm changes in `config.loss` for the M-step."""
    out = {} if self.policy is None else {"policy": self.policy}
    if not self.decision_term:
      out["decision_coef"] = 0.0
    return out

  def warnings(self) -> list[str]:
    """Settings this algorithm cannot use well, said once at the start of the run."""
    return []


@register("autocode")
class AutoCode(Algorithm):
  """The paper's EM: forced rollouts estimate Q_hat, s* curates them (aci_jax/em/estep.py)."""

  forced = True
  decision_term = True

  def select(self, groups, rng):
    return curate(groups, self.cfg, rng)

  def warnings(self):
    warning = alpha_floor_warning(self.cfg.alpha, self.cfg.form)
    return [warning] if warning else []


@register("em_no_decision")
class EMNoDecision(AutoCode):
  """The AutoCode E-step and M-step without the decision term (lambda = 0)."""

  decision_term = False


def _baseline(groups, kept, adv) -> Curated:
  return Curated(kept, adv, [False] * len(kept), [],
                 estep_stats(native_outcomes(groups), [], kept))


@register("grpo")
class GRPO(Algorithm):
  """Standard RL: native rollouts of the queries whose rewards differ, advantages whitened per
  query (GRPO's group baseline).

  The loss is `ppo_clip`, GRPO's clipped surrogate with the ratio to the behaviour policy. The
  registered `grpo` term fixes the ratio at 1 (strictly on-policy), which is wrong from the
  second M-step epoch on; measured: it collapsed the toy policy within two iterations."""

  policy = "ppo_clip"

  def select(self, groups, rng):
    kept, adv = [], []
    for g in groups:
      rewards = [t.reward for t in g.native]
      if len(set(rewards)) > 1:  # all-equal groups carry no policy-gradient signal
        kept += g.native
        adv += whiten(rewards).tolist()
    return _baseline(groups, kept, adv)


@register("rejection_sft")
class RejectionSFT(Algorithm):
  """SFT on the policy's own correct native rollouts (not the paper's "SFT only" row: that is
  the warm-up checkpoint, evaluation point 0 of every run)."""

  policy = "sft_nll"

  def select(self, groups, rng):
    kept = [t for g in groups for t in g.native if t.reward > 0]
    return _baseline(groups, kept, [1.0] * len(kept))

