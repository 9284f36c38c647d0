"""The EM iteration (and its baselines) over a `Trainer`, a `RolloutEngine` and a `Grader`.

One iteration:

  E-step   queries -> native rollouts (pi_hat) + K forced rollouts per decision (Q_hat)
           -> graded -> s*(c|x) -> curated rollouts with advantages and decision flags
  M-step   `epochs` passes of the clipped off-policy loss (+ lambda * decision term) over the
           curated set, with the behaviour log-probs recorded at sampling time

The algorithm (`em.algorithm`: autocode, em_no_decision, grpo, rejection_sft) decides the
rollouts of a query, their curation and the M-step loss (aci_jax/em/algorithms.py); this loop
runs the steps they share.

Multi-host: the iteration's queries are dealt over the processes (`multihost.owner_of`); each
host rolls out, grades and curates its own queries (its rows, its sandbox, its grader; every
random draw is keyed by query, so nothing depends on the split). Only the curated set and
per-query summaries are all-gathered (O(kept tokens), not O(rollouts)); every host then builds
the same M-step mini-batches and feeds its slice of rows to the train step.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import jax
import numpy as np

from aci_jax import fileio
from aci_jax.em import algorithms
from aci_jax.em.batches import build_batch, bucketed_minibatches
from aci_jax.em.estep import (CODE, COT, EStepConfig, QueryGroup, estep_stats, family_stats,
                              native_outcomes)
from aci_jax.parallel import multihost
from aci_jax.rollout import Request, Trajectory
from aci_jax.rollout.trajectory import pack, unpack

log = logging.getLogger(__name__)

PROGRESS_FILE = "em_progress.json"


def save_progress(trainer) -> bool:
  """Checkpoints the run; returns whether a new checkpoint was started.

  Checkpoints are keyed by the optimizer step. An iteration whose M-step had nothing to train
  on (every query dropped) does not advance it, and the checkpoint of that step already
  exists; its bookkeeping (iteration, data cursor, evaluation history) then goes to
  `<workdir>/em_progress.json`, tagged with the step, written atomically.
  `restore_progress` adopts it only on top of a checkpoint of that same step.
  """
  step = trainer.step
  if step not in trainer.ckpt.all_steps():
    trainer.save()
    return True
  if jax.process_index() == 0:
    from aci_jax.em.report import write_summary
    write_summary(fileio.join(trainer.workdir, PROGRESS_FILE), {"step": step,
                                                                 "meta": trainer.meta})
  return False


def restore_progress(trainer) -> None:
  """After `trainer.restore_or_init()`: newer bookkeeping saved at the same step wins."""
  path = fileio.join(trainer.workdir, PROGRESS_FILE)
  if not fileio.exists(path):  # a local path or gs://
    return
  saved = fileio.read_json(path)
  meta = saved.get("meta", {})
  if (saved.get("step") == trainer.step and
      meta.get("em_iteration", 0) >= trainer.meta.get("em_iteration", 0)):
    trainer.meta.update(meta)


@dataclasses.dataclass(frozen=True)
class EMConfig(EStepConfig):
  """`config.em`: the E-step's knobs (alpha, form, pi_prior, keep_per_query, adv_whiten; their
  one set of defaults is `EStepConfig`'s) and the loop's. The flat `config.em` keys map onto
  these fields one to one."""

  algorithm: str = "autocode"  # a name in algorithms.ALGORITHMS
  iterations: int = 3
  queries_per_iteration: int = 64
  native_samples: int = 8  # native rollouts per query (pi_hat)
  k_per_decision: int = 8  # forced rollouts per decision (Q_hat)
  epochs: int = 1
  batch_length: int = 0  # 0 = bucketed longest trajectory
  # Forced code by instruction: the forced code rollouts are sampled from the prompt of
  # `ask_for_code + problem` (and still start with the code prefix). A policy that was taught
  # to write cells only when asked (the rare-code warm-up with epsilon = 0) does not reach them
  # from the prefix alone. The M-step trains them under the un-asked prompt, the one the policy
  # must learn to code from, with behaviour log-probs re-scored there.
  ask_for_code: str = ""

  def __post_init__(self):
    algorithms.get(self.algorithm)
    if self.iterations < 0 or self.queries_per_iteration < 1 or self.epochs < 1:
      raise ValueError("need iterations >= 0, queries_per_iteration >= 1, epochs >= 1")
    super().__post_init__()


def gather_payload(kept, adv, dec, ests, native) -> tuple:
  """What one process sends in `EMLoop.gather`: the curated trajectories packed into a few
  concatenated arrays (`trajectory.pack`: 9 bytes per token and the text, where the pickled
  trajectory objects took ~20 and the text), their advantages and decision flags as arrays,
  and the per-query summaries."""
  return (pack(kept), np.asarray(adv, np.float64), np.asarray(dec, bool), ests, native)


def merge_gathered(queries: Sequence[int], parts: Sequence[tuple]) -> tuple:
  """Every process's `gather_payload` merged into `curate`'s outputs in the order of `queries`
  (the order one process would produce)."""
  rank = {q: i for i, q in enumerate(dict.fromkeys(queries))}
  items = sorted((x for p in parts for x in zip(unpack(p[0]), p[1].tolist(), p[2].tolist())),
                 key=lambda x: rank[x[0].prompt_index])
  ests = sorted((e for p in parts for e in p[3]), key=lambda e: rank[e.query_id])
  native = sorted((o for p in parts for o in p[4]), key=lambda o: rank[o[0]])
  return ([x[0] for x in items], [x[1] for x in items], [x[2] for x in items], ests, native)


@dataclasses.dataclass
class Problem:
  problem: str
  answer: str
  meta: dict = dataclasses.field(default_factory=dict)


class EMLoop:
  """Drives iterations; all mutable run state (cursor, iteration) lives in `trainer.meta`
  so it is checkpointed with the parameters and a resumed run continues exactly."""

  def __init__(self, cfg: EMConfig, trainer, engine, grader, tokenizer,
               problems: Sequence[Problem], prompt_fn: Callable[[str], list[int]], *,
               seed: int = 0, on_iteration: Callable[[int, dict], None] | None = None):
    self.cfg, self.trainer, self.engine, self.grader = cfg, trainer, engine, grader
    self.problems, self.prompt_fn = list(problems), prompt_fn
    self.seed = seed
    self.on_iteration = on_iteration
    if not self.problems:
      raise ValueError("the EM loop needs at least one training problem")
    self.algorithm = algorithms.get(cfg.algorithm)(cfg)
    # Forced code rollouts start with the tool format's code prefix (aci_jax/tool_format.py).
    self._prefix = tokenizer.encode(engine.tool_format.code_prefix)
    for warning in self.algorithm.warnings():
      log.warning("%s", warning)
    # A prompt that does not fit the sampler (with the forced code prefix) can never be rolled
    # out; such problems leave the pool up front, as other RL trainers filter over-long prompts.
    limit = engine.cfg.max_prompt_tokens - len(self._prefix)
    fits = [p for p in self.problems
            if len(self.code_prompt(p.problem) or prompt_fn(p.problem)) <= limit]
    if len(fits) < len(self.problems):
      log.warning("EM: %d of %d training problems have prompts over %d tokens "
                  "(rollout.max_prompt_tokens minus the code prefix%s) and are left out",
                  len(self.problems) - len(fits), len(self.problems), limit,
                  ", asking for code" if cfg.ask_for_code else "")
    if not fits:
      from aci_jax.configuration import ConfigError
      raise ConfigError(f"config.rollout.max_prompt_tokens={engine.cfg.max_prompt_tokens}: no "
                        f"training problem's prompt fits")
    self.problems = fits

  # ------------------------------------------------------------------------ E-step

  def _queries(self, cursor: int) -> list[int]:
    """The next `queries_per_iteration` problem indices of a seeded permutation per epoch."""
    n, out = len(self.problems), []
    while len(out) < self.cfg.queries_per_iteration:
      epoch, pos = divmod(cursor, n)
      perm = np.random.default_rng([self.seed, epoch]).permutation(n)
      out.append(int(perm[pos]))
      cursor += 1
    return out

  def code_prompt(self, problem: str) -> list[int] | None:
    """The prompt of the forced code rollouts when they are asked for (`em.ask_for_code`)."""
    return self.prompt_fn(self.cfg.ask_for_code + problem) if self.cfg.ask_for_code else None

  def requests(self, queries: Sequence[int], iteration: int) -> list[Request]:
    """The algorithm's rollouts of every query, in the order of `queries`."""
    return [r for q in queries
            for r in self.algorithm.requests(self.prompt_fn(self.problems[q].problem), q,
                                             iteration, self._prefix,
                                             code_prompt_ids=self.code_prompt(
                                                 self.problems[q].problem))]

  def unask(self, trajs: Sequence[Trajectory]) -> int:
    """Puts the un-asked prompt under every rollout sampled from the asking one (the prompt
    the M-step trains it under); its recorded log-probs are re-scored there in `rescore_asked`."""
    n = 0
    for t in trajs:
      if t.meta.get("asked"):
        t.set_prompt(self.prompt_fn(self.problems[t.prompt_index].problem))
        n += 1
    return n

  def grade(self, trajs: Sequence[Trajectory]) -> None:
    """Sets `reward` (1.0 iff the final boxed answer equals the gold; truncated = 0).

    The final answer is the last box, or the run of boxes written as one answer just before the
    end (docs/grading.md, section 1)."""
    results = self.grader.grade_batch(
        [(self.problems[t.prompt_index].answer, t.text, True) for t in trajs])
    for t, r in zip(trajs, results):
      t.reward = 1.0 if (r.equal and t.stop_reason != "length") else 0.0
      t.meta["grade_status"] = r.status

  def curate(self, trajs: Sequence[Trajectory], rng):
    """(trajectories, advantages, decision flags, query estimates, native outcomes) for the
    M-step and the statistics, by the algorithm; `rng(query)` is that query's generator."""
    by_q: dict[int, QueryGroup] = {}
    for t in trajs:
      g = by_q.setdefault(t.prompt_index, QueryGroup(t.prompt_index, [], {COT: [], CODE: []}))
      if t.mode == "native":
        g.native.append(t)
      else:
        g.forced[CODE if t.mode == "code" else COT].append(t)
    groups = list(by_q.values())
    cur = self.algorithm.curate(groups, rng)
    return (cur.trajectories, cur.advantages, cur.decision, cur.estimates,
            native_outcomes(groups))

  def gather(self, queries: Sequence[int], local) -> tuple:
    """All processes' `curate` outputs merged in the order of `queries` (the order one process
    would produce); the identity on one process."""
    if jax.process_count() == 1:
      return local
    return merge_gathered(queries, multihost.allgather_objects(gather_payload(*local)))

  # ------------------------------------------------------------------------ M-step

  def mstep(self, trajs, adv, decision, rng) -> list[dict]:
    tr, c = self.trainer, self.cfg
    if not trajs:
      log.warning("M-step: nothing to train on this iteration")
      return []
    size = tr.config.train.batch_size
    # Every process built the same global mini-batch; each feeds its own block of rows.
    n = size // jax.process_count()
    lo = jax.process_index() * n
    out = []
    # Each mini-batch padded to its own (length-bucketed) longest row, not the iteration's.
    for mb in bucketed_minibatches(trajs, adv, decision, size, rng, epochs=c.epochs,
                                   length=c.batch_length or None):
      m = tr.train_step({k: v[lo:lo + n] for k, v in mb.items()})
      tr.log(tr.step, m)
      out.append(m)
    return out

  def rescore_asked(self, trajs: Sequence[Trajectory]) -> int:
    """Replaces the behaviour log-probs of the rollouts sampled under the asking prompt (now
    under the un-asked one, `unask`) by the current policy's there, once per rollout before the
    M-step's first update: left with the asking prompt's, the clipped ratio of the cell's first
    tokens would start near P(code | un-asked) / P(code | asked), tiny for a policy that seldom
    codes. Every process holds the same `trajs` and feeds its block of each global batch."""
    asked = [t for t in trajs if t.meta.get("asked")]
    tr = self.trainer
    size = tr.config.train.batch_size
    n = size // jax.process_count()
    lo = jax.process_index() * n
    for i in range(0, len(asked), size):
      chunk = asked[i:i + size]
      mb = build_batch(chunk)
      rows = {k: np.zeros((size,) + mb[k].shape[1:], mb[k].dtype)
              for k in ("tokens", "positions", "valid")}
      rows["positions"][:] = np.arange(rows["positions"].shape[1])  # padding rows too
      for k in rows:
        rows[k][:len(chunk)] = mb[k]
      logp = tr.token_logprobs({k: v[lo:lo + n] for k, v in rows.items()})
      for j, t in enumerate(chunk):
        p, r = len(t.prompt_ids), len(t.response_ids)
        # Tokens the policy wrote; tool output keeps its record (loss mask 0, never trained).
        t.set_logp(np.where(t.loss_mask.array > 0, logp[j, p:p + r], t.logp.array))
    return len(asked)

  # ------------------------------------------------------------------------ driver

  def run_iteration(self) -> dict:
    tr = self.trainer
    it = int(tr.meta.get("em_iteration", 0))
    cursor = int(tr.meta.get("data_cursor", 0))
    # Curation draws are keyed by query (see `gather`); the M-step shuffle by iteration.
    curate_rng = lambda q: np.random.default_rng([self.seed, it, 7, q])
    rng = np.random.default_rng([self.seed, it, 8])
    t0 = time.perf_counter()
    queries = self._queries(cursor)
    owner = multihost.owner_of(queries)
    mine = [q for q in queries if owner[q] == jax.process_index()]
    rollout = self.engine.run_local(tr.state.params, self.requests(mine, it))
    trajs = rollout.trajectories
    self.unask(trajs)
    t_roll = time.perf_counter() - t0
    cells = sum(1 for t in trajs for cell in t.cells if cell.status not in ("limit", "no_code"))
    log.info("E-step: process %d of %d ran %d rollouts and %d code cells",
                 jax.process_index(), jax.process_count(), len(trajs), cells)
    self.grade(trajs)
    kept, adv, decision, ests, native = self.gather(queries, self.curate(trajs, curate_rng))
    stats = estep_stats(native, ests, kept)
    stats.update(family_stats(native, lambda q: self.problems[q].meta.get("family")))
    if not kept:  # no signal: the M-step cannot run and the policy will not change
      correct = sum(1 for t in trajs if t.reward)
      boxed = sum(1 for t in trajs if "\\boxed" in t.text)
      log.warning(
          "\n%s\nE-STEP HAS NO SIGNAL: iteration %d kept no rollout, the M-step is SKIPPED and "
          "the policy is unchanged.\nCause: %d of %d rollouts were correct (%d wrote \\boxed{}, "
          "%d ran a code cell) on %d queries; a query needs a correct forced rollout to be kept."
          "\nTypical fixes: a format warm-up (warmup.steps, warmup.data_path; docs/real_model.md),"
          " an answer-format instruction (task.instruction), more samples (em.k_per_decision) or "
          "max_new_tokens.\n%s", "!" * 78, it + 1, correct, len(trajs), boxed,
          sum(1 for t in trajs if t.used_code), len(queries), "!" * 78)
    t1 = time.perf_counter()
    stats["em/asked_kept"] = self.rescore_asked(kept)
    mstep = self.mstep(kept, adv, decision, rng)
    stats.update({
        "em/iteration": it + 1,
        **dict(zip(("em/rollouts", "em/cells"),
                   multihost.allgather_ints([len(trajs), cells]).sum(axis=0).tolist())),
        "em/rollout_seconds": t_roll,
        "em/mstep_seconds": time.perf_counter() - t1,
        "em/mstep_steps": len(mstep),
        "em/mstep_skipped": int(not kept),
        "em/device_idle_fraction": rollout.stats.idle_fraction,  # of this E-step
    })
    if mstep:
      stats["em/loss_first"] = mstep[0].get("loss", float("nan"))
      stats["em/loss_last"] = mstep[-1].get("loss", float("nan"))
    tr.meta["em_iteration"] = it + 1
    tr.meta["data_cursor"] = cursor + len(queries)
    tr.log(tr.step, {k: v for k, v in stats.items() if not isinstance(v, list)})
    if self.on_iteration is not None:
      self.on_iteration(it + 1, stats)
    save_progress(tr)
    stats["trajectories"] = trajs  # this process's rollouts
    return stats
