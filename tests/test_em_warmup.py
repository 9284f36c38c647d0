"""The EM warm-up's SFT settings: configs/default.py's warm-up schedule over the EM run's
optimizer and loss, as the warm-up has always trained (values by hand from the config file)."""

import os
import runpy

from aci_jax.configuration import dataclass_from
from aci_jax.em.modes import warmup_settings
from aci_jax.train.losses import LossConfig
from aci_jax.train.modes import _trainer_config
from aci_jax.train.optim import OptimConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _default(**warmup):
  c = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))["get_config"]()
  with c.unlocked():
    c.warmup.update(warmup)
  return c


def test_default_warmup_settings():
  s = warmup_settings(_default(), "demos.jsonl", "out/hf")
  # warmup: 2,000 steps of 32 demos of <= 112 tokens packed into 192-token rows, lr 3e-3 after
  # 100 warm-up steps, cosine to lr/10, weight decay 0.01, b2 0.98, no clipping; b1 and eps are
  # the EM optimizer's. The gate's tail past step 2,000 is averaged (decay 0.995).
  assert s.optim == OptimConfig(lr=3e-3, warmup_steps=100, decay_steps=2000, end_lr_ratio=0.1,
                                b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01, clip_norm=0.0,
                                average_decay=0.995, average_start=2000)
  # Plain SFT with the EM loss's aggregation and clip settings; no KL even when the EM run
  # has one (its reference would be the random init).
  assert s.loss == LossConfig(policy="sft_nll", decision_coef=0.0, aggregation="token_mean",
                              clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0)
  assert (s.data, s.steps, s.batch_size, s.seq_len, s.pack_len, s.system) == (
      "demos.jsonl", 2000, 32, 112, 192, None)
  # Logs every 25 steps, checkpoints every 500 (a quarter of the run), exports once at the end.
  assert (s.log_every, s.checkpoint_every, s.export_every, s.export_at_end, s.export_dir) == (
      25, 500, 0, True, "out/hf")


def test_warmup_has_no_kl_term_when_the_em_run_does():
  c = _default()
  with c.unlocked():
    c.loss.kl_coef = 0.1
    c.loss.kl_tokens = "after_decision"
  loss = warmup_settings(c, "d.jsonl", "o").loss
  assert (loss.kl_coef, loss.kl_tokens) == (0.0, "all")


def test_short_warmup_and_system_message():
  c = _default(steps=30)
  with c.unlocked():
    c.data.system = "Be brief."
  s = warmup_settings(c, "d.jsonl", "o")
  assert (s.optim.warmup_steps, s.optim.decay_steps) == (30, 30)  # warm-up capped at the run
  assert (s.log_every, s.checkpoint_every, s.system) == (3, 50, "Be brief.")


def test_the_trainer_gets_the_warmup_optimizer_and_batch_size():
  c = _default()
  s = warmup_settings(c, "d.jsonl", "o")
  tc = _trainer_config(c, s)
  assert dataclass_from(OptimConfig, tc.optim, name="optim") == s.optim
  assert tc.train.batch_size == 32
  assert c.optim.lr == 6e-5  # the EM run's config is left as it was
