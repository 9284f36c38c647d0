"""The training run around the step: model + params, mesh, optimizer, state, checkpoints,
metrics and HF export, built from an `ml_collections` config. Used by the `sft` and `export`
modes, and by the EM loop for its M-step (same object, its own loss config and batches).

Config sections read here (docs/config.md: every key; aci_jax/configuration.py: the defaults):
  seed, model, tokenizer, mesh, loss, optim, train, checkpoint, export.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax import fileio
from aci_jax.configuration import MODEL_RUNTIME_KEYS, ConfigError, dataclass_from, seed_for
from aci_jax.metrics import MetricsWriter
from aci_jax.model import ModelConfig, init_params
from aci_jax.parallel import MeshConfig, make_mesh
from aci_jax.parallel.rules import data_parallel_size
from aci_jax.train.checkpoint import Checkpointer
from aci_jax.train.losses import LossConfig
from aci_jax.train.optim import OptimConfig, make_optimizer, policy_params
from aci_jax.train.step import (StepConfig, TrainState, abstract_train_state, init_train_state,
                                make_logprobs_fn, make_train_step, shard_batch)

log = logging.getLogger(__name__)


def model_config(c) -> tuple[ModelConfig, str | None]:
  """(ModelConfig, HF checkpoint dir or None) from `config.model`."""
  m = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(c.model).items()}
  init = m.pop("init", "scratch")
  path = m.pop("path", "") or None
  if init == "hf":
    if not path:
      raise ConfigError("config.model.path: required when config.model.init='hf'")
    runtime = {k: m[k] for k in MODEL_RUNTIME_KEYS if k in m}
    try:
      path = fileio.stage(path)  # gs://: safetensors are mmap'd, so each host reads a local copy
      return ModelConfig.from_pretrained(path, **runtime), path
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.model.path: {e}") from None
  if init != "scratch":
    raise ConfigError(f"config.model.init must be 'scratch' or 'hf', got {init!r}")
  return dataclass_from(ModelConfig, m, name="model"), None


def load_tokenizer(c, hf_path: str | None):
  from aci_jax.tokenizer import load_tokenizer as load

  return load(c.get("tokenizer", "") or hf_path)


class Trainer:
  """State and machinery of one training run; `workdir` holds checkpoints, metrics, exports."""

  def __init__(self, config, workdir: str, *, loss_cfg: LossConfig | None = None):
    self.config = config
    self.workdir = workdir
    self.model_cfg, self.hf_path = model_config(config)
    self.loss_cfg = loss_cfg or dataclass_from(LossConfig, config.loss, name="loss")
    self.optim_cfg = dataclass_from(OptimConfig, config.optim, name="optim")
    t = config.train
    # config.train also holds the loop's keys (steps, batch_size, log_every); a StepConfig
    # field a hand-built config leaves out keeps its dataclass default.
    self.step_cfg = dataclass_from(
        StepConfig, {f: t[f] for f in StepConfig.__dataclass_fields__ if f in t}, name="train")
    try:
      self.mesh = make_mesh(dataclass_from(MeshConfig, config.mesh, name="mesh"))
    except ValueError as e:
      raise ConfigError(f"config.mesh: {e}") from None
    dp = data_parallel_size(self.mesh)
    if t.batch_size % (t.micro_batches * dp):
      raise ConfigError(f"config.train.batch_size={t.batch_size} must divide by micro_batches "
                        f"({t.micro_batches}) x data-parallel devices ({dp})")
    self.optimizer, self.schedule = make_optimizer(self.optim_cfg)
    ck = config.checkpoint
    self.ckpt = Checkpointer(fileio.join(workdir, "checkpoints"), max_to_keep=ck.max_to_keep,
                             async_save=ck.async_save)
    self.metrics = MetricsWriter(workdir)
    self.state: TrainState | None = None
    self.shardings = None
    self.meta: dict[str, Any] = {}
    self._step_fn = None
    # The KL term's reference policy: the run's starting parameters (the loaded checkpoint or
    # the seeded init), kept as a second copy only when a loss term needs `ref_logp`.
    self._ref_params = None
    self._logp_fn = None  # (params, batch) -> log-probs: the reference's, token_logprobs'

  # --------------------------------------------------------------------- state

  def restore_or_init(self) -> bool:
    """Restores the latest checkpoint if there is one (returns True), else initialises."""
    abstract, self.shardings = abstract_train_state(self.model_cfg, self.optimizer, self.mesh)
    needs_ref = "ref_logp" in self.loss_cfg.required_keys()
    if self.ckpt.latest_step() is not None:
      self.state, self.meta = self.ckpt.restore(abstract)
      self.metrics.reset(self.meta.get("metrics_history", []))
      if needs_ref:  # a resumed run keeps the reference it started with
        self._ref_params = self._initial_params()
      return True
    params = self._initial_params()
    if needs_ref:
      # A copy: the train state's parameters are donated to (and overwritten by) each step.
      self._ref_params = jax.tree.map(jnp.copy, params)
    self.state, self.shardings = init_train_state(params, self.optimizer, self.mesh,
                                                  seed=self.config.seed + 1)
    self.meta = {"em_iteration": 0, "data_cursor": 0, "metrics_history": []}
    return False

  def _initial_params(self):
    """The run's starting parameters: the configured checkpoint, else the seeded init (the
    same on every call, so a resumed run rebuilds the same KL reference)."""
    if self.hf_path:
      from aci_jax.model.weights import load_params
      return load_params(self.hf_path, self.model_cfg, shardings=self.shardings.params)
    return jax.jit(init_params, static_argnums=0, out_shardings=self.shardings.params)(
        self.model_cfg, jax.random.key(seed_for(self.config, "init")))

  def set_optim(self, cfg: OptimConfig) -> None:
    """Continues with the learning-rate schedule of `cfg` (same optimizer otherwise, so the
    state carries over): a warm-up whose decay starts when a probe passes (`run_sft`'s gate)."""
    optimizer, schedule = make_optimizer(cfg)
    if (jax.tree.structure(jax.eval_shape(optimizer.init, self.state.params))
        != jax.tree.structure(self.state.opt_state)):
      raise ValueError("set_optim: the new optimizer's state differs from the run's")
    self.optim_cfg, self.optimizer, self.schedule = cfg, optimizer, schedule
    self._step_fn = None  # recompiled with the new schedule at the next step

  @property
  def step(self) -> int:
    return int(jax.device_get(self.state.step))

  # ---------------------------------------------------------------------- step

  def train_step(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """One optimizer step on this process's rows of the global batch; metrics as floats."""
    if self._step_fn is None:
      self._step_fn = make_train_step(self.model_cfg, self.loss_cfg, self.optimizer,
                                      self.schedule, self.mesh, self.shardings, self.step_cfg)
    global_rows = len(next(iter(host_batch.values()))) * jax.process_count()
    batch = shard_batch(host_batch, self.mesh, global_rows=global_rows)
    t0 = time.perf_counter()
    if self._ref_params is not None and "ref_logp" not in batch:
      batch = {**batch, "ref_logp": self._logprobs_fn()(self._ref_params, batch)}
    self.state, metrics = self._step_fn(self.state, batch)
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    dt = time.perf_counter() - t0
    out["perf/step_seconds"] = dt
    out["perf/tokens_per_second"] = float(np.sum(host_batch["valid"])) * jax.process_count() / dt
    return out

  def _logprobs_fn(self):
    if self._logp_fn is None:
      self._logp_fn = make_logprobs_fn(self.model_cfg, self.shardings.params)
    return self._logp_fn

  def token_logprobs(self, host_batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """log p(tokens[t] | tokens[:t]) [B, T] of the global batch under the current parameters
    (0 at t = 0; the sampler's T = 1 convention), from this process's rows of `tokens`,
    `positions` and `valid`; every process gets all B rows back."""
    global_rows = len(host_batch["tokens"]) * jax.process_count()
    out = self._logprobs_fn()(self.state.params, shard_batch(host_batch, self.mesh,
                                                       global_rows=global_rows))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(out, tiled=True))
    return np.asarray(jax.device_get(out))

  def log(self, step: int, scalars: Mapping[str, float]) -> None:
    record = self.metrics.write(step, scalars)
    self.meta.setdefault("metrics_history", []).append(record)

  def save(self, *, force: bool = True) -> None:
    meta = {**self.meta, "config": self.config.to_dict()}
    self.ckpt.save(self.step, self.state, meta, force=force)
    self.metrics.sync()  # a remote workdir's metrics reach the bucket with every checkpoint

  def export(self, directory: str | None = None) -> str:
    """Writes the current policy as a Hugging Face directory (collective on multi-host)."""
    from aci_jax.model.weights import export_params, export_path
    e = self.config.export
    directory = directory or export_path(self.workdir, self.step)
    tok_dir = self.hf_path if self.hf_path and os.path.isdir(self.hf_path) else None
    export_params(policy_params(self.state), self.model_cfg, directory, dtype=e.dtype or None,
                  tokenizer_dir=tok_dir)
    log.info("exported the policy at step %d to %s", self.step, directory)
    return directory

  def close(self) -> None:
    self.ckpt.close()
    self.metrics.close()
