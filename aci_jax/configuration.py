"""The ground floor of configuration: the errors, the section-to-dataclass helper, the defaults.

A config (configs/*.py) is `defaults()` plus the values it changes. `defaults()` builds every
section; a section backed by a dataclass takes its values from that dataclass's field defaults
(`DATACLASS_KEYS`), so each default lives in one place and a config file never restates one.
Sections, or parts of them, with no dataclass behind them get their defaults here
(`PLAIN_DEFAULTS`).
Every config therefore has every key, and `--config.SECTION.KEY=VALUE` can set any of them.

This module imports only the standard library at import time, as every layer raises its
errors; ml_collections and the dataclasses' modules are imported when `defaults()` runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  import ml_collections


class ConfigError(ValueError):
  """A config key or value the run cannot use; main prints it as one line."""


class UsageError(Exception):
  """Reported by main as one line on stderr, exit status 2."""


def dataclass_from(cls, section, *, name: str, **overrides):
  """`cls(**section)` with a one-line ConfigError naming the bad key or value."""
  fields = {f.name for f in dataclasses.fields(cls)}
  values = dict(section) if section is not None else {}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ConfigError(f"config.{name}: unknown key(s) {unknown}; known: {sorted(fields)}")
  values.update(overrides)
  try:
    return cls(**values)
  except (ValueError, KeyError, TypeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise ConfigError(f"config.{name}: {msg}") from None


MODEL_RUNTIME_KEYS = ("dtype", "param_dtype", "remat")  # the ModelConfig fields not in a checkpoint

# section: [("module:Dataclass", the fields that are keys of the section, or None for all)].
# A field left out is set by the code (rollout.sampling and .seed come from the section's
# temperature/top_p/top_k and config.seed) or is an engine internal no run has changed; it
# keeps its dataclass default. tests/test_configuration.py holds the sections to these lists.
DATACLASS_KEYS = {
    # The architecture has no default: a from-scratch config states it, `init="hf"` reads it
    # from the checkpoint. Only the run-time fields are defaults.
    "model": [("aci_jax.model.config:ModelConfig", MODEL_RUNTIME_KEYS)],
    "mesh": [("aci_jax.parallel.mesh:MeshConfig", None)],
    "em": [("aci_jax.em.loop:EMConfig", None)],
    "rollout": [
        ("aci_jax.rollout.engine:RolloutConfig",
         ("batch_size", "max_prompt_tokens", "max_new_tokens", "max_tool_calls",
          "decode_steps", "tool_format", "kv_page_size", "kv_pool_tokens")),
        ("aci_jax.sampling.sampler:SamplingParams", ("temperature", "top_p", "top_k"))],
    "sandbox": [("aci_jax.sandbox.config:SandboxConfig",
                 ("timeout_s", "memory_mb", "mode", "allow_weak"))],
    "train": [("aci_jax.train.step:StepConfig", None)],
    "loss": [("aci_jax.train.losses:LossConfig",
              ("policy", "clip_eps_low", "clip_eps_high", "decision_coef", "kl_coef",
               "kl_tokens", "aggregation"))],
    "optim": [("aci_jax.train.optim:OptimConfig", None)],
}

# Keys no dataclass holds, by section ("" = top level). Values: mostly those of the paper-scale
# preset (configs/paper.py), the toy task's for the toy's own keys.
PLAIN_DEFAULTS = {
    # problem_seed / order_seed / init_seed: -1 = `seed`; train_seed: -1 = the problem seed
    # (see seed_for)
    "": dict(mode="autocode", seed=0, problem_seed=-1, train_seed=-1, order_seed=-1,
             init_seed=-1,
             progress=True,
             tokenizer=""),  # "" = the tokenizer of model.path
    "model": dict(init="scratch", path=""),
    "mesh": {},
    # + families (the toy's DEFAULT_FAMILIES) and eval_paths (one per registered benchmark)
    # instruction: the answer-format instruction after every problem ("" = none, the toy's)
    "task": dict(name="toy", train_per_family=2000, train_caps=(), eval_per_family=25,
                 warmup_examples=8000,
                 code_fraction=0.1, triggered_fraction=0.0, triggered_families=(),
                 triggered_length_balance=False, copy_drill=0.0, demo_repeats=(),
                 forced_fraction=0.0,
                 train_path="", train_benchmark="",
                 eval_limit=0, instruction=""),
    # The warm-up run's optimizer: `lr` peak, linear warm-up, cosine to lr x end_lr_ratio.
    "warmup": dict(steps=0, batch_size=64, lr=1e-5, warmup_steps=20, seq_len=2048,
                   data_path="", end_lr_ratio=1.0, weight_decay=0.0, b2=0.95, clip_norm=1.0,
                   pack_len=0, gate=(), gate_mode="extend", gate_every=250, gate_min=0.9,
                   gate_n=64, gate_tail=500, gate_retries=0, gate_retry_below=1.0,
                   average_decay=0.0),
    "data": dict(train_path="", toy_examples=0, seq_len=2048, system=""),
    "em": {},
    "rollout": {},
    "sandbox": {},
    "grader": dict(num_workers=8, timeout=5.0, fallback="none"),  # Grader's keyword arguments
    "eval": dict(every=1, samples=4, temperature=0.6, selection=True),
    "train": dict(steps=0, batch_size=128, log_every=1),
    "loss": {},
    "optim": {},
    "checkpoint": dict(every=1, max_to_keep=2, async_save=True),
    "export": dict(every=0, at_end=True, dtype="", dir="", step=0),
    "dist": dict(multihost="auto", coordinator="", num_processes=1, process_id=0,
                 cpu_collectives="gloo"),
}


SEED_ROLES = ("problem", "train", "order", "init")


def seed_for(config, role: str) -> int:
  """The seed of one of the run's random draws: `problem` (the toy's held-out evaluation
  problems, the warm-up gate's held-out problems), `train` (the toy's training problems and
  warm-up demonstrations), `order` (the SFT data's shuffle and packing), `init` (the initial
  weights). Each is `config.seed` unless `<role>_seed` >= 0 sets it, except `train`, which
  follows the problem seed (so `problem_seed` alone moves every problem the run sees), so one
  draw can vary with the others fixed (issue 16: what makes a warm-up seed late?). A warm-up
  retry (`warmup.gate_retries`) moves `train`, `order` and `init` and keeps `problem`: another
  warm-up, judged on the same held-out problems. Sampling keys and EM's query order always
  follow `config.seed`."""
  if role not in SEED_ROLES:
    raise ValueError(f"seed role must be one of {SEED_ROLES}, got {role!r}")
  own = config.get(f"{role}_seed", -1)
  if isinstance(own, bool) or not isinstance(own, int) or own < -1:
    fallback = "the problem seed" if role == "train" else "config.seed"
    raise ConfigError(f"config.{role}_seed must be -1 (= {fallback}) or an integer >= 0, "
                      f"got {own!r}")
  if own >= 0:
    return own
  return seed_for(config, "problem") if role == "train" else int(config.seed)


def dataclass_class(path: str):
  """The class named by "module:Name"."""
  module, name = path.split(":")
  return getattr(importlib.import_module(module), name)


def field_defaults(cls, keys=None) -> dict:
  """{field: default} of dataclass `cls`, for `keys` (None: every field) in field order."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  missing = [k for k in keys or () if k not in fields]
  if missing:
    raise ValueError(f"{cls.__name__} has no field(s) {missing}")
  out = {}
  for name, f in fields.items():
    if keys is not None and name not in keys:
      continue
    if f.default is not dataclasses.MISSING:
      out[name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[name] = f.default_factory()
    else:
      raise ValueError(f"{cls.__name__}.{name} has no default to put in a config")
  return out


def defaults() -> ml_collections.ConfigDict:
  """A fresh ConfigDict of every section with its default values (see the module docstring)."""
  import ml_collections

  from aci_jax.data.datasets import BENCHMARKS
  from aci_jax.data.toy import DEFAULT_FAMILIES

  c = ml_collections.ConfigDict(dict(PLAIN_DEFAULTS[""]))
  for section, plain in PLAIN_DEFAULTS.items():
    if not section:
      continue
    values = dict(plain)
    for path, keys in DATACLASS_KEYS.get(section, ()):
      values.update(field_defaults(dataclass_class(path), keys))
    if section == "task":  # a path per registered benchmark; "" = not evaluated
      values["families"] = DEFAULT_FAMILIES
      values["eval_paths"] = ml_collections.ConfigDict({name: "" for name in BENCHMARKS})
    c[section] = ml_collections.ConfigDict(values)
  return c
