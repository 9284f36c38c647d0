"""aci_jax.configuration: every dataclass-backed section of `defaults()` holds exactly its
dataclass fields with their defaults (they cannot drift), every config has every key, and config
errors are one line."""

import dataclasses
import os
import runpy

import ml_collections
import pytest

from aci_jax import configuration
from aci_jax.configuration import ConfigError, dataclass_from, defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fields_with_defaults(cls) -> dict:
  """Written out here rather than with configuration.field_defaults, the code under test."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def _same(a, b) -> bool:
  return type(a) is type(b) and a == b


def test_dataclass_sections_hold_exactly_the_dataclass_fields_and_defaults():
  from aci_jax.em.loop import EMConfig
  from aci_jax.model.config import ModelConfig
  from aci_jax.parallel.mesh import MeshConfig
  from aci_jax.rollout.engine import RolloutConfig
  from aci_jax.sampling.sampler import SamplingParams
  from aci_jax.sandbox.config import SandboxConfig
  from aci_jax.train.losses import LossConfig
  from aci_jax.train.optim import OptimConfig
  from aci_jax.train.step import StepConfig

  c = defaults()
  # section -> (dataclasses whose fields it holds, in full unless limited in DATACLASS_KEYS).
  classes = {"model": [ModelConfig], "mesh": [MeshConfig], "em": [EMConfig],
             "rollout": [RolloutConfig, SamplingParams], "sandbox": [SandboxConfig],
             "train": [StepConfig], "loss": [LossConfig], "optim": [OptimConfig]}
  assert set(classes) == set(configuration.DATACLASS_KEYS)
  for section, clss in classes.items():
    plain = configuration.PLAIN_DEFAULTS[section]
    expected = dict(plain)
    for cls, (path, keys) in zip(clss, configuration.DATACLASS_KEYS[section]):
      assert path.endswith(":" + cls.__name__)
      fields = _fields_with_defaults(cls)
      if keys is None:  # the whole dataclass: no field may be missing from the config
        assert set(fields) == {f.name for f in dataclasses.fields(cls)}, cls
        expected.update(fields)
      else:
        assert set(keys) <= set(fields), (cls, set(keys) - set(fields))
        expected.update({k: fields[k] for k in keys})
      assert not set(plain) & set(fields), f"{section}: a plain key shadows a field of {cls}"
    got = c[section].to_dict()
    if section == "task":  # written from the toy's and the benchmarks' tables: next test
      got.pop("eval_paths")
      got.pop("families")
    assert set(got) == set(expected), (section, set(got) ^ set(expected))
    for key, value in expected.items():
      assert _same(got[key], value), (section, key, got[key], value)


# Fields of a dataclass-backed section that are not config keys, restated here so that a field
# added to a dataclass fails this test until it is made a key or listed (and so stays visible).
NOT_KEYS = {
    "model": {"arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
              "num_heads", "num_kv_heads", "head_dim", "rms_norm_eps", "rope_theta",
              "rope_scaling", "max_position_embeddings", "tie_word_embeddings", "qkv_bias",
              "o_bias", "mlp_bias", "bos_token_id", "eos_token_ids"},
    "rollout": {"sampling", "seed", "stop_strings", "barrier", "resume_mode", "refill_rows",
                "min_chunk", "greedy"},
    "sandbox": {"max_output_bytes", "max_chars", "max_workers", "max_pending", "max_sessions",
                "max_code_bytes", "spares", "nproc", "nofile", "stack_mb", "file_mb", "cpu_s",
                "session_cpu_s", "uid_base", "isolation", "preload", "warmup",
                "display_last_expr", "stdout_on_error", "strip", "empty_text", "timeout_text",
                "persistent_recovery", "start_timeout_s"},
    "loss": {"kl_estimator", "max_log_ratio"},
}


def test_fields_left_out_of_a_section_are_the_listed_ones():
  for section, entries in configuration.DATACLASS_KEYS.items():
    fields, keys = set(), set()
    for path, names in entries:
      cls = configuration.dataclass_class(path)
      fields |= {f.name for f in dataclasses.fields(cls)}
      keys |= fields if names is None else set(names)
    assert fields - keys == NOT_KEYS.get(section, set()), (section, fields - keys)


def test_task_defaults_follow_the_toy_families_and_the_benchmarks():
  from aci_jax.data.datasets import BENCHMARKS
  from aci_jax.data.toy import DEFAULT_FAMILIES
  task = defaults().task
  assert task.eval_paths.to_dict() == {name: "" for name in BENCHMARKS}
  assert task.families == DEFAULT_FAMILIES == ("compare", "add", "mul", "powmod")


def test_defaults_are_fresh_and_every_config_has_every_key():
  a, b = defaults(), defaults()
  a.em.iterations = 99
  assert b.em.iterations != 99

  def keys(c, prefix=""):
    out = set()
    for k, v in c.items():
      out |= keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else {
          prefix + k}
    return out

  base = keys(defaults())
  configs = [runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"]()
             for name in ("default", "sft_toy", "smollm2_cpu")]
  default = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))
  configs += [default["get_config"](v) for v in default["VARIANTS"]]
  paper = runpy.run_path(os.path.join(ROOT, "configs", "paper.py"))
  configs += [paper["get_config"](name) for name in paper["MODELS"]]
  for c in configs:
    extra = keys(c) - base
    # Only a from-scratch model states its architecture, which has no default.
    assert all(k.startswith("model.") for k in extra), extra
    assert base <= keys(c)


def test_dataclass_from_names_the_bad_key_in_one_line():
  from aci_jax.train.optim import OptimConfig
  with pytest.raises(ConfigError, match=r"config.optim: unknown key\(s\) \['nope'\]"):
    dataclass_from(OptimConfig, {"nope": 1}, name="optim")
  with pytest.raises(ConfigError, match="config.optim: ") as e:
    dataclass_from(OptimConfig, {"lr": -1.0}, name="optim")
  assert "\n" not in str(e.value)
  assert dataclass_from(OptimConfig, {"lr": 0.5}, name="optim").lr == 0.5


def test_configuration_imports_nothing_heavy():
  import subprocess
  import sys
  code = ("import sys, aci_jax.configuration; "
          "print(sorted(m for m in ('jax', 'numpy', 'ml_collections') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


def test_every_autocode_config_and_variant_validates():
  # A key one config sets must not make another, or a variant that inherits it, invalid (the
  # default's warmup.average_decay once did for its gate-less :rare_code variants).
  from aci_jax.em.modes import validate
  default = runpy.run_path(os.path.join(ROOT, "configs", "default.py"))
  paper = runpy.run_path(os.path.join(ROOT, "configs", "paper.py"))
  configs = {f"default.py:{v}": default["get_config"](v) for v in default["VARIANTS"]}
  configs.update({f"paper.py:{m}": paper["get_config"](m) for m in paper["MODELS"]})
  gateless = default["get_config"]()
  gateless.warmup.gate = ()  # the documented way to turn the default's gate off
  configs["default.py --config.warmup.gate=()"] = gateless
  for name, c in configs.items():
    if c.get("mode", "autocode") == "autocode":
      validate(c)  # raises ConfigError with the key's name
