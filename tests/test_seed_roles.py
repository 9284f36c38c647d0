"""config.problem_seed / train_seed / order_seed / init_seed (configuration.seed_for): each of the
run's random draws can vary with the others fixed, and -1 leaves it on config.seed (train_seed:
on the problem seed)."""

import json
import os
import runpy

import jax
import ml_collections
import numpy as np
import pytest

from aci_jax.configuration import ConfigError, seed_for
from aci_jax.data import toy
from aci_jax.data.char_tokenizer import char_tokenizer
from aci_jax.data.sft import build_sft_data
from aci_jax.em import modes as em_modes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**top):
  c = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
  with c.unlocked():
    c.task.update(train_per_family=30, eval_per_family=5)
    c.update(top)
  return c


def test_each_role_follows_its_own_key_or_the_seed():
  roles = ("problem", "train", "order", "init")
  c = _config(seed=5)
  assert [seed_for(c, r) for r in roles] == [5, 5, 5, 5]
  c = _config(seed=5, problem_seed=0, init_seed=9)  # train follows the problem seed
  assert [seed_for(c, r) for r in roles] == [0, 0, 5, 9]
  c = _config(seed=5, problem_seed=0, train_seed=3)
  assert [seed_for(c, r) for r in roles] == [0, 3, 5, 5]
  for bad in (-2, 1.5, True, "3"):  # a fresh ConfigDict takes any type
    with pytest.raises(ConfigError, match="problem_seed"):
      seed_for(ml_collections.ConfigDict({"seed": 0, "problem_seed": bad}), "problem")
    with pytest.raises(ConfigError, match="train_seed"):
      seed_for(ml_collections.ConfigDict({"seed": 0, "train_seed": bad}), "train")
  with pytest.raises(ValueError, match="seed role"):
    seed_for(c, "sampling")


def test_problems_and_demos_follow_problem_seed_only():
  base = _config(seed=1)
  train, test = em_modes._problems(base)
  other, _ = em_modes._problems(_config(seed=2))
  assert [p["problem"] for p in train] != [p["problem"] for p in other]  # the seed draws them
  # problem_seed=1 under seed 2 draws seed 1's problems and demonstrations, order/init aside.
  moved = _config(seed=2, problem_seed=1, order_seed=7, init_seed=7)
  train2, test2 = em_modes._problems(moved)
  assert train2 == train and test2 == test
  assert em_modes._warmup_demos(moved, train2) == em_modes._warmup_demos(base, train)
  # Reference: the toy's own draw with seed 1.
  assert train == toy.make_problems(30, split="train", families=tuple(base.task.families),
                                    seed=1, caps=toy.family_caps(()))


def test_train_seed_draws_other_training_problems_and_keeps_the_held_out_ones():
  base = _config(seed=1)
  train, test = em_modes._problems(base)
  moved = _config(seed=1, train_seed=7)
  train7, test7 = em_modes._problems(moved)
  assert test7 == test  # the evaluation set is the problem seed's
  assert train7 == toy.make_problems(30, split="train", families=tuple(base.task.families),
                                     seed=7, caps=toy.family_caps(()))
  assert train7 != train
  assert em_modes._warmup_demos(moved, train7) != em_modes._warmup_demos(base, train)
  # Neither pool holds a held-out problem (the split is by problem text, not by seed).
  assert not {p["problem"] for p in train7} & {p["problem"] for p in test7["toy"]}


def _first_step(tmp_path, name, **top):
  """(initial params, step-1 loss) of a 1-step toy SFT run through run_sft (the warm-up's path)."""
  from aci_jax.train import modes
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.optim import OptimConfig
  from aci_jax.train.runner import Trainer

  c = runpy.run_path(os.path.join(ROOT, "configs", "sft_toy.py"))["get_config"]()
  with c.unlocked():
    c.progress = False
    c.checkpoint.async_save = False
    c.update(top)
  s = modes.SFTSettings(
      data=toy.sft_records(64, seed=0), steps=1, batch_size=8, seq_len=128,
      optim=OptimConfig(lr=1e-3, warmup_steps=1, decay_steps=1), log_every=1,
      loss=LossConfig(policy="sft_nll", decision_coef=0.0), export_at_end=False)
  work = str(tmp_path / name)
  t = Trainer(modes._trainer_config(c, s), work)  # pylint: disable=protected-access
  t.restore_or_init()
  init = jax.device_get(t.state.params)
  t.close()
  modes.run_sft(c, work, s)
  with open(os.path.join(work, "metrics.jsonl")) as f:
    loss = [json.loads(line) for line in f if '"loss"' in line][0]["loss"]
  return init, loss


def test_run_sft_takes_its_data_order_and_initial_weights_from_their_roles(tmp_path):
  same = lambda a, b: all(np.array_equal(x, y) for x, y in
                          zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  p0, l0 = _first_step(tmp_path, "base", seed=0)
  p_order, l_order = _first_step(tmp_path, "order", seed=0, order_seed=1)
  p_init, l_init = _first_step(tmp_path, "init", seed=0, init_seed=1)
  p_seed, _ = _first_step(tmp_path, "seed", seed=1, init_seed=0, order_seed=0)
  assert same(p0, p_order) and same(p0, p_seed) and not same(p0, p_init)
  assert l_order != l0  # the same weights saw another first batch
  assert l_init != l0
