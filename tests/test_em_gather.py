"""The E-step's multi-host gather, without processes: what each host sends (`gather_payload`,
through pickle as `multihost.allgather_objects` sends it) merges into exactly the curated set one
process would have made, in query order; and it is compact arrays, not pickled objects."""

import pickle

import numpy as np

from aci_jax.em.estep import QueryEstimate
from aci_jax.em.loop import gather_payload, merge_gathered
from aci_jax.rollout.trajectory import Cell, Trajectory


def _curated(queries, rng):
  """`curate`'s outputs for `queries` (in that order): 3 kept rollouts of each."""
  kept, adv, dec, ests, native = [], [], [], [], []
  for q in queries:
    prompt = rng.integers(0, 150_000, 20 + q).tolist()
    for k in range(3):
      r = int(rng.integers(1, 200))
      kept.append(Trajectory(q, k, ("code", "cot")[k % 2], prompt,
                             rng.integers(0, 150_000, r).tolist(),
                             (-rng.exponential(1.0, r)).astype(np.float32),
                             rng.integers(0, 3, r).tolist(), [Cell("c", "o", "ok")], "eos",
                             f"q{q} k{k}", reward=float(k % 2), meta={"grade_status": "ok"}))
      adv.append(float(rng.standard_normal()))
      dec.append(bool(k % 2))
    ests.append(QueryEstimate(q, np.array([0.5, 0.5]), np.array([0.0, 1.0]),
                              np.array([0.1, 0.9]), False))
    native.append((q, bool(q % 2), 1.0))
  return kept, adv, dec, ests, native


def test_hosts_merge_into_what_one_process_curates():
  queries = [3, 1, 4, 0, 2]
  one = _curated(queries, np.random.default_rng(0))
  # Host h curated queries[h::2] (multihost.owner_of deals them round robin).
  by_q = {q: i for i, q in enumerate(queries)}
  parts = []
  for h in range(2):
    mine = set(queries[h::2])
    sel = [i for i, t in enumerate(one[0]) if t.prompt_index in mine]
    local = ([one[0][i] for i in sel], [one[1][i] for i in sel], [one[2][i] for i in sel],
             [e for e in one[3] if e.query_id in mine], [o for o in one[4] if o[0] in mine])
    parts.append(pickle.loads(pickle.dumps(gather_payload(*local),
                                           protocol=pickle.HIGHEST_PROTOCOL)))
  kept, adv, dec, ests, native = merge_gathered(queries, parts[::-1])  # any process order
  assert kept == one[0]
  assert [by_q[t.prompt_index] for t in kept] == sorted(by_q[t.prompt_index] for t in kept)
  assert adv == one[1] and all(type(a) is float for a in adv)
  assert dec == one[2] and all(type(d) is bool for d in dec)
  assert [e.query_id for e in ests] == queries and native == one[4]
  # The three samples of a query arrive with one shared prompt array.
  assert kept[0].prompt_ids is kept[1].prompt_ids is kept[2].prompt_ids


def test_payload_is_compact():
  kept, adv, dec, ests, native = _curated(range(20), np.random.default_rng(1))
  tokens = sum(len(t.response_ids) for t in kept)
  new = len(pickle.dumps(gather_payload(kept, adv, dec, ests, native),
                         protocol=pickle.HIGHEST_PROTOCOL))
  old = len(pickle.dumps(([(t.prompt_index, t.sample_index, t.mode, t.prompt_ids.tolist(),
                             t.response_ids.tolist(), t.logp.tolist(), t.source.tolist(),
                             t.cells, t.stop_reason, t.text, t.reward, t.meta, a, d)
                            for t, a, d in zip(kept, adv, dec)], ests, native),
                         protocol=pickle.HIGHEST_PROTOCOL))
  # 9 bytes per token plus small per-rollout records; Python lists pickle to ~20.
  assert new < 12 * tokens < old
