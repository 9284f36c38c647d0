"""An evaluation-only run (em.iterations=0) on a fresh workdir holds the parameters without an
optimizer state (Adam's moments would double their host memory) and checkpoints nothing, so an
EM run started later on the same workdir begins from the same model with a full state."""

import jax
import os
import runpy

from aci_jax.em import modes
from aci_jax.train.runner import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(iterations):
  c = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
  with c.unlocked():
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, head_dim=8)
    c.task.update(train_per_family=2, eval_per_family=1)
    c.warmup.steps = 0
    c.em.update(iterations=iterations, queries_per_iteration=4, native_samples=1,
                k_per_decision=1, keep_per_query=1, epochs=1)
    c.rollout.update(batch_size=8, max_new_tokens=16)
    c.train.batch_size = 8
    c.sandbox.allow_weak = True
  return c


def test_eval_only_keeps_no_optimizer_state_and_an_em_run_follows(tmp_path, monkeypatch):
  states = []
  restore = Trainer.restore_or_init

  def spy(self):
    out = restore(self)
    states.append((sum(x.size for x in jax.tree_util.tree_leaves(self.state.opt_state)),
                   sum(x.size for x in jax.tree_util.tree_leaves(self.state.params))))
    return out

  monkeypatch.setattr(Trainer, "restore_or_init", spy)
  workdir = str(tmp_path / "run")
  modes.autocode(_config(0), workdir)
  assert states[-1][0] == 0  # parameters only
  assert os.path.exists(os.path.join(workdir, "summary.json"))
  assert not os.listdir(os.path.join(workdir, "checkpoints"))
  modes.autocode(_config(1), workdir)  # EM on the same workdir: a fresh, full state
  opt, params = states[-1]
  assert opt >= 2 * params  # Adam's two moments
  assert os.listdir(os.path.join(workdir, "checkpoints"))
