"""The compact trajectory record: token fields are frozen int32 / float32 / int8 arrays that
behave like the lists they replaced, JSON records are byte for byte what the list record wrote,
`pack` / `unpack` invert each other, and M-step rows are those the list record made."""

import copy
import json
import pickle

import numpy as np
import pytest

from aci_jax.em.batches import build_batch
from aci_jax.rollout.trajectory import (SRC_ENV, SRC_FORCED, Cell, Column, Trajectory, pack,
                                        unpack)


def _traj(k=0, prompt=(5, 6, 7), resp=(1, 2, 300_000), logp=(-0.5, -0.25, 0.0),
          source=(SRC_FORCED, SRC_ENV, 0), **kw):
  kw.setdefault("cells", [Cell("print(1)", "1", "ok", 0.5)])
  return Trajectory(0, k, "code", prompt, resp, logp, source,
                    stop_reason="eos", text="x", **kw)


def test_column_behaves_like_the_list_it_replaced():
  c = Column([3, 1, 200_000], np.int32)
  assert c == [3, 1, 200_000] and [3, 1, 200_000] == c and c == (3, 1, 200_000)
  assert c == np.array([3, 1, 200_000]) and c == Column([3, 1, 200_000], np.int64)
  assert c != [3, 1] and c != [3, 1, 7] and c != "ab" and not (c == 3)
  assert c[0] == 3 and type(c[0]) is int and c[-1] == 200_000
  assert c[1:] == [1, 200_000] and isinstance(c[1:], Column)
  assert list(c) == [3, 1, 200_000] and all(type(x) is int for x in c)
  assert c.tolist() == [3, 1, 200_000] and len(c) == 3 and 1 in c and c.index(200_000) == 2
  assert type(Column([0.5], np.float32)[0]) is float
  with pytest.raises(TypeError):
    hash(c)
  assert np.asarray(c) is c.array  # no copy
  with pytest.raises(ValueError):
    c.array[0] = 9  # frozen: samples share their prompt array
  assert pickle.loads(pickle.dumps(c)) == c and copy.deepcopy(c) == c


def test_fields_are_compact_and_never_alias_the_callers_buffer():
  buf = np.arange(10, dtype=np.int32)
  t = _traj(resp=buf[2:5], logp=np.array([-1.0, -2.0, -3.0]), source=[0, 0, 2])
  assert t.prompt_ids.dtype == np.int32 and t.response_ids.dtype == np.int32
  assert t.logp.dtype == np.float32 and t.source.dtype == np.int8
  assert t.loss_mask == [1, 1, 0] and t.loss_mask.dtype == np.uint8
  buf[:] = -1  # the sampler reuses its output buffer: the record keeps what it was given
  assert t.response_ids == [2, 3, 4]
  assert t.response_ids.array.base is None


def test_samples_of_a_prompt_share_one_array():
  a, b = _traj(0, prompt=[9, 8, 7]), _traj(1, prompt=[9, 8, 7])
  c = _traj(2, prompt=[9, 8, 6])
  assert a.prompt_ids is b.prompt_ids and a.prompt_ids is not c.prompt_ids
  assert c.prompt_ids == [9, 8, 6]


def test_json_record_is_unchanged():
  t = _traj(reward=1.0, meta={"grade_status": "ok", "tags": [1, 2]})
  # The record the list-based Trajectory wrote (dataclasses.asdict + the derived fields).
  want = {"prompt_index": 0, "sample_index": 0, "mode": "code", "prompt_ids": [5, 6, 7],
          "response_ids": [1, 2, 300_000], "logp": [-0.5, -0.25, 0.0], "source": [1, 2, 0],
          "cells": [{"code": "print(1)", "output": "1", "status": "ok", "seconds": 0.5}],
          "stop_reason": "eos", "text": "x", "reward": 1.0,
          "meta": {"grade_status": "ok", "tags": [1, 2]},
          "loss_mask": [1, 0, 1], "num_calls": 1, "used_code": True}
  got = t.to_json()
  assert json.dumps(got) == json.dumps(want)  # same values, types and key order
  assert all(type(x) is int for x in got["response_ids"] + got["loss_mask"])
  got["meta"]["tags"].append(3)  # a copy: the record's meta is not shared
  assert t.meta["tags"] == [1, 2]
  back = Trajectory.from_json(json.loads(json.dumps(t.to_json())))
  assert back == t and back.to_json() == t.to_json()


def test_sampled_logprobs_survive_json_exactly():
  lp = np.random.default_rng(0).normal(size=50).astype(np.float32)
  t = _traj(resp=range(50), logp=[float(x) for x in lp], source=[0] * 50)
  back = Trajectory.from_json(json.loads(json.dumps(t.to_json())))
  np.testing.assert_array_equal(np.asarray(back.logp), lp)


def _random(n, rng):
  prompts = [rng.integers(0, 150_000, int(rng.integers(1, 40))).tolist() for _ in range(4)]
  out = []
  for i in range(n):
    r = int(rng.integers(0, 60))  # includes empty responses
    out.append(Trajectory(
        i % 4, i, ("native", "code", "cot")[i % 3], prompts[i % 4],
        rng.integers(0, 150_000, r).tolist(), (-rng.exponential(1.0, r)).astype(np.float32),
        rng.integers(0, 3, r).tolist(), [Cell("c", "o", "ok")] * (i % 2), "eos", f"t{i}",
        reward=None if i % 5 == 0 else float(i % 2), meta={"i": i}))
  return out


def test_pack_unpack_round_trip():
  rng = np.random.default_rng(1)
  trajs = _random(40, rng)
  packed = pickle.loads(pickle.dumps(pack(trajs), protocol=pickle.HIGHEST_PROTOCOL))
  assert packed["response_ids"].dtype == np.int32 and packed["logp"].dtype == np.float32
  assert packed["source"].dtype == np.int8
  assert len(packed["prompt_offsets"]) == 5  # each distinct prompt sent once
  back = unpack(packed)
  assert back == trajs
  for a, b in zip(back, trajs):
    for name in ("prompt_ids", "response_ids", "logp", "source"):
      assert getattr(a, name).dtype == getattr(b, name).dtype
      np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
  assert back[0].prompt_ids is back[4].prompt_ids
  assert unpack(pack([])) == []


def test_build_batch_rows_are_those_of_the_list_record():
  rng = np.random.default_rng(2)
  trajs = _random(30, rng)
  adv, dec = rng.standard_normal(30), rng.random(30) > 0.5
  got = build_batch(trajs, adv, dec)
  # Independent reference: the rows from plain Python lists.
  t_len = got["tokens"].shape[1]
  for i, t in enumerate(trajs):
    ids = list(t.prompt_ids.tolist()) + t.response_ids.tolist()
    p = len(t.prompt_ids)
    tokens = ids + [0] * (t_len - len(ids))
    mask = [0.0] * p + [0.0 if s == SRC_ENV else 1.0 for s in t.source.tolist()]
    logp = [0.0] * p + t.logp.tolist()
    assert got["tokens"][i].tolist() == tokens
    assert got["valid"][i].tolist() == [j < len(ids) for j in range(t_len)]
    assert got["loss_mask"][i].tolist() == mask + [0.0] * (t_len - len(ids))
    assert got["behaviour_logp"][i].tolist() == logp + [0.0] * (t_len - len(ids))
  np.testing.assert_array_equal(got["advantages"], adv.astype(np.float32))
