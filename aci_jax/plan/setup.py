"""What a plan needs from a config: the model's shapes (without downloading it), the mesh over
a topology's abstract devices, the train step's and the rollout's sizes."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from aci_jax.plan.chips import PlanError

# Architectures of the paper presets' hub checkpoints (their config.json), so a plan needs no
# download. A local `model.path` with a config.json is read instead.
KNOWN_MODELS = {
    "Qwen/Qwen2.5-7B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=152064,
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=131072),
    "Qwen/Qwen2.5-Math-1.5B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936,
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=4096),
    "deepseek-ai/deepseek-math-7b-base": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=102400,
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=30,
        num_attention_heads=32, num_key_value_heads=32, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=4096),
}


@dataclasses.dataclass
class Setup:
  """Everything a plan needs from a config."""

  model: Any  # ModelConfig
  mesh: Any  # jax.sharding.Mesh over abstract TPU devices
  loss: Any
  optimizer: Any
  schedule: Any
  step: Any  # StepConfig
  train_rows: int
  train_len: int
  rollout_rows: int
  capacity: int
  max_new: int
  prompt_chunk: int
  decode_steps: int
  sampling: Any
  # The longest row's live KV length assumed for decode (attention reads live KV blocks only,
  # a run-time count; `aci_jax.model.live_attention`): the mean context of 600.
  live_tokens: int = 600
  # The rollout's KV cache (`RolloutConfig.kv_page_size` / `kv_pool_tokens`; page 0 =
  # contiguous). A plan at another row count keeps the pool's tokens per row.
  kv_page_size: int = 0
  kv_pool_tokens: int = 0

  def rollout_config(self, rows: int):
    """The engine's `RolloutConfig` at `rows` rows (pool scaled to keep tokens per row)."""
    from aci_jax.rollout import RolloutConfig
    return RolloutConfig(batch_size=rows, max_prompt_tokens=self.prompt_chunk,
                         max_new_tokens=self.max_new, decode_steps=self.decode_steps,
                         kv_page_size=self.kv_page_size,
                         kv_pool_tokens=self.kv_pool_tokens * rows // self.rollout_rows)


def model_config_for(config):
  """ModelConfig of `config.model` without downloading: a known hub id's shapes, or a local
  checkpoint's config.json."""
  from aci_jax.configuration import MODEL_RUNTIME_KEYS, dataclass_from
  from aci_jax.model import ModelConfig

  m = dict(config.model)
  runtime = {k: m[k] for k in MODEL_RUNTIME_KEYS if k in m}
  if m.get("init", "scratch") != "hf":
    m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()
         if k not in ("init", "path")}
    return dataclass_from(ModelConfig, m, name="model")
  path = m.get("path", "")
  if path in KNOWN_MODELS:
    return ModelConfig.from_hf_dict(KNOWN_MODELS[path], **runtime)
  if os.path.isfile(os.path.join(path, "config.json")):
    return ModelConfig.from_pretrained(path, **runtime)
  raise PlanError(f"config.model.path {path!r}: not a local checkpoint directory and not one "
                  f"of the known hub ids ({', '.join(KNOWN_MODELS)})")


def setup_from_config(config, devices) -> Setup:
  import jax
  from aci_jax.em.modes import _loss_for, _rollout_config
  from aci_jax.parallel import MeshConfig
  from aci_jax.parallel.mesh import AXES
  from aci_jax.configuration import dataclass_from
  from aci_jax.train.optim import OptimConfig, make_optimizer
  from aci_jax.train.step import StepConfig

  model = model_config_for(config)
  try:
    shape = dataclass_from(MeshConfig, config.mesh, name="mesh").resolve(len(devices))
  except ValueError as e:
    raise PlanError(f"config.mesh: {e}") from None
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  mesh = jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
  t = config.train
  step = dataclass_from(StepConfig, {"micro_batches": t.micro_batches,
                                     "logprob_chunk": t.logprob_chunk,
                                     "logprob_remat": t.get("logprob_remat", True),
                                     "scan_layers": t.get("scan_layers", True)},
                        name="train")
  optimizer, schedule = make_optimizer(dataclass_from(OptimConfig, config.optim, name="optim"))
  rollout = _rollout_config(config)
  length = int(config.em.get("batch_length", 0) or 0) or rollout.capacity
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % (t.micro_batches * dp):
    raise PlanError(f"config.train.batch_size={t.batch_size} must divide by micro_batches "
                    f"({t.micro_batches}) x data-parallel chips ({dp})")
  if rollout.batch_size % dp:
    raise PlanError(f"config.rollout.batch_size={rollout.batch_size} must divide by the "
                    f"data-parallel chips ({dp})")
  return Setup(model=model, mesh=mesh, loss=_loss_for(config), optimizer=optimizer,
               schedule=schedule, step=step, train_rows=t.batch_size, train_len=length,
               rollout_rows=rollout.batch_size, capacity=rollout.capacity,
               max_new=rollout.max_new_tokens, prompt_chunk=rollout.max_prompt_tokens,
               decode_steps=rollout.decode_steps, sampling=rollout.sampling,
               kv_page_size=rollout.kv_page_size, kv_pool_tokens=rollout.kv_pool_tokens)

