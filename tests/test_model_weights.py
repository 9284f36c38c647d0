"""Checkpoint I/O: sharded loading, export round trip, sharded files, and malformed checkpoints."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from aci_jax.model import (Decoder, ModelConfig, UnsupportedConfigError, param_shapes,
                           positions_from_valid, schema)
from aci_jax.model.safetensors_io import CheckpointError, SafetensorsFile, write_safetensors
from aci_jax.model.weights import export_params, load_params
from aci_jax.parallel import MeshConfig, logical_axes, make_mesh, param_shardings
from hf_fixtures import hf_logits, make_hf_model, save_hf_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logits(cfg, params, tokens):
  valid = jnp.ones(tokens.shape, bool)
  fwd = jax.jit(lambda p, t: Decoder(cfg).apply({"params": p}, t, positions_from_valid(valid),
                                                valid=valid)[0])
  return np.asarray(fwd(params, tokens))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  model = make_hf_model("qwen2", num_attention_heads=8, num_key_value_heads=4, hidden_size=64,
                        intermediate_size=96, vocab_size=128, tie_word_embeddings=False)
  return model, save_hf_model(model, tmp_path_factory.mktemp("qwen") / "ckpt")


@pytest.mark.parametrize("mesh_cfg", [MeshConfig(data=1, fsdp=2, tensor=4),
                                      MeshConfig(data=2, fsdp=4, tensor=1),
                                      MeshConfig(data=1, fsdp=1, tensor=8)])
def test_sharded_load_gives_single_device_logits(qwen_dir, mesh_cfg):
  _, d = qwen_dir
  cfg = ModelConfig.from_pretrained(d)
  assert jax.device_count() == 8
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (8, 12)), jnp.int32)
  single = _logits(cfg, load_params(d, cfg), tokens)
  mesh = make_mesh(mesh_cfg)
  params = load_params(d, cfg, mesh=mesh)
  # Parameters really are sharded: a kernel split over fsdp and/or tensor has smaller shards.
  q = params["layers"]["attn"]["q_proj"]["kernel"]
  assert isinstance(q.sharding, NamedSharding)
  shard_elems = q.addressable_shards[0].data.size
  assert shard_elems == q.size // (mesh.shape["fsdp"] * mesh.shape["tensor"])
  # And they hold the same values as the single-device load.
  ref = load_params(d, cfg)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(_logits(cfg, params, tokens), single, atol=1e-5, rtol=0)


def test_indivisible_dimension_is_replicated_not_broken():
  """An MLP of 36 columns cannot split 8 ways: that dimension is replicated, the rest still
  follows the rules (embed over fsdp)."""
  shapes = {"layers": {"mlp": {"up_proj": {"kernel": jax.ShapeDtypeStruct((2, 64, 36),
                                                                           jnp.float32)}}}}
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
  spec = param_shardings(shapes, mesh)["layers"]["mlp"]["up_proj"]["kernel"].spec
  assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  shapes["layers"]["mlp"]["up_proj"]["kernel"] = jax.ShapeDtypeStruct((2, 64, 6), jnp.float32)
  spec = param_shardings(shapes, mesh)["layers"]["mlp"]["up_proj"]["kernel"].spec
  assert spec == jax.sharding.PartitionSpec(None, "fsdp", None)


def test_export_round_trip_through_transformers(qwen_dir, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM

  model, d = qwen_dir
  cfg = ModelConfig.from_pretrained(d)
  params = load_params(d, cfg, mesh=make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
  out = tmp_path / "exported"
  export_params(params, cfg, str(out), max_shard_bytes=60_000)  # forces several shard files
  assert (out / "model.safetensors.index.json").exists()
  assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
  back = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                              attn_implementation="eager").eval()
  tokens = np.random.default_rng(1).integers(0, 128, (2, 10)).astype(np.int32)
  np.testing.assert_array_equal(hf_logits(back, tokens), hf_logits(model, tokens))
  # And our loader reads its own sharded export.
  again = load_params(str(out), ModelConfig.from_pretrained(str(out)))
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_export_loads_in_transformers(tmp_path):
  import torch
  from transformers import AutoModelForCausalLM

  model = make_hf_model("llama", tie_word_embeddings=True)
  d = save_hf_model(model, tmp_path / "in")
  cfg = ModelConfig.from_pretrained(d)
  export_params(load_params(d, cfg), cfg, str(tmp_path / "out"), dtype="bfloat16")
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
  assert back.model.embed_tokens.weight.dtype == torch.bfloat16
  ref = model.model.embed_tokens.weight.to(torch.bfloat16)
  assert torch.equal(back.model.embed_tokens.weight, ref)


def test_export_keeps_tokenizer_and_chat_template(qwen_dir, tmp_path):
  # transformers saves a chat template to chat_template.jinja; an export without it renders
  # every prompt of the trained model without its template.
  from aci_jax.tokenizer import Tokenizer
  from tokenizer_fixtures import build_tokenizer

  _, d = qwen_dir
  tok_dir = build_tokenizer(tmp_path / "tok")
  assert os.path.exists(os.path.join(tok_dir, "chat_template.jinja"))
  cfg = ModelConfig.from_pretrained(d)
  export_params(load_params(d, cfg), cfg, str(tmp_path / "exp"), tokenizer_dir=tok_dir)
  before, after = Tokenizer.from_pretrained(tok_dir), Tokenizer.from_pretrained(
      str(tmp_path / "exp"))
  msgs = [{"role": "user", "content": "1+1?"}]
  assert after.has_chat_template and after.chat_prompt(msgs) == before.chat_prompt(msgs)


def test_export_replaces_directory_atomically(qwen_dir, tmp_path):
  _, d = qwen_dir
  cfg = ModelConfig.from_pretrained(d)
  params = load_params(d, cfg)
  out = tmp_path / "exp"
  out.mkdir()
  (out / "stale.txt").write_text("old")
  export_params(params, cfg, str(out))
  assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dirs left


def test_sharded_hf_checkpoint_loads(tmp_path):
  model = make_hf_model("llama", rope_theta=5e5)
  d = save_hf_model(model, tmp_path / "sharded", max_shard_size="40KB")
  assert os.path.exists(os.path.join(d, "model.safetensors.index.json"))
  cfg = ModelConfig.from_pretrained(d)
  tokens = np.random.default_rng(2).integers(0, 96, (2, 9)).astype(np.int32)
  np.testing.assert_allclose(_logits(cfg, load_params(d, cfg), jnp.asarray(tokens)),
                             hf_logits(model, tokens), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------- malformed inputs


@pytest.fixture()
def llama_dir(tmp_path):
  return save_hf_model(make_hf_model("llama"), tmp_path / "ckpt")


def _rewrite(d, mutate):
  """Rewrites model.safetensors through `mutate(dict) -> dict`."""
  f = SafetensorsFile(os.path.join(d, "model.safetensors"))
  tensors = {k: np.array(f.get(k)) for k in f.keys()}
  del f
  write_safetensors(os.path.join(d, "model.safetensors"), mutate(tensors))


def _load(d):
  return load_params(d, ModelConfig.from_pretrained(d))


def test_missing_tensor_is_named(llama_dir):
  _rewrite(llama_dir, lambda t: {k: v for k, v in t.items()
                                 if k != "model.layers.1.mlp.up_proj.weight"})
  with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj"):
    _load(llama_dir)


def test_unexpected_tensor_is_named(llama_dir):
  _rewrite(llama_dir, lambda t: {**t, "model.layers.0.extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.extra"):
    _load(llama_dir)


def test_wrong_shape_is_named(llama_dir):
  def mutate(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 32), np.float32)
    return t

  _rewrite(llama_dir, mutate)
  with pytest.raises(CheckpointError,
                     match=r"wrong shapes: model\.layers\.0\.self_attn\.k_proj\.weight \[5, 32\]"):
    _load(llama_dir)


def test_missing_shard_file_is_named(tmp_path):
  d = save_hf_model(make_hf_model("qwen2"), tmp_path / "s", max_shard_size="40KB")
  shard = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))[-1]
  os.remove(os.path.join(d, shard))
  with pytest.raises(CheckpointError, match=shard):
    _load(d)


def test_no_weights_and_corrupt_file(llama_dir):
  os.rename(os.path.join(llama_dir, "model.safetensors"), os.path.join(llama_dir, "x.bin"))
  with pytest.raises(CheckpointError, match="neither model.safetensors"):
    _load(llama_dir)
  with open(os.path.join(llama_dir, "model.safetensors"), "wb") as f:
    f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
  with pytest.raises(CheckpointError, match="not a valid safetensors"):
    _load(llama_dir)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "unsupported model_type"),
    ({"use_sliding_window": True, "sliding_window": 64}, "sliding-window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}},
     "rope scaling type 'dynamic'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "missing 'low_freq_factor'"),
])
def test_unsupported_configs_fail_clearly(tmp_path, change, message):
  cfg = json.loads(json.dumps(make_hf_model("qwen2").config.to_dict()))
  cfg.update(change)
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(UnsupportedConfigError, match=message):
    ModelConfig.from_pretrained(str(tmp_path))


def test_config_round_trip_preserves_architecture():
  model = make_hf_model("llama", rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64},
                        attention_bias=True, head_dim=12)
  cfg = ModelConfig.from_hf_dict(model.config.to_dict())
  assert cfg.head_dim == 12 and cfg.qkv_bias and cfg.o_bias and cfg.rope_scaling.factor == 8.0
  assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


# ---------------------------------------------------------------------------------- the CLI


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "aci_jax.verify_checkpoint", *args],
                        capture_output=True, text=True, env=env, timeout=300)


def test_verify_checkpoint_cli(tmp_path):
  d = save_hf_model(make_hf_model("qwen2", tie_word_embeddings=True), tmp_path / "ok")
  good = _cli(d)
  assert good.returncode == 0, good.stderr
  assert "max |logit diff|" in good.stdout and good.stdout.rstrip().splitlines()[-1].startswith(
      "OK")
  # Broken loaders failing: tests/test_verify_checkpoint.py.
  # Bad input: a one-line error and exit 2.
  os.remove(os.path.join(d, "model.safetensors"))
  missing = _cli(d)
  assert missing.returncode == 2
  assert missing.stderr.strip().startswith("error:") and len(missing.stderr.strip().splitlines()) == 1


def test_unrepresentable_qwen2_export_fails_up_front():
  cfg = ModelConfig(arch="qwen2", vocab_size=16, hidden_size=8, intermediate_size=8,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, qkv_bias=False)
  with pytest.raises(UnsupportedConfigError, match="arch='llama'"):
    cfg.to_hf_dict()


# ------------------------------------------------------------------------ parameter schema

_SCHEMA_CASES = [("qwen2", {}), ("qwen2", {"tie_word_embeddings": True}), ("llama", {}),
                 ("llama", {"attention_bias": True, "mlp_bias": True,
                            "tie_word_embeddings": True})]


@pytest.mark.parametrize("arch,overrides", _SCHEMA_CASES)
def test_schema_is_the_decoders_tree_and_covers_every_hf_tensor(arch, overrides):
  """One table describes the tree: `init_params` builds exactly its paths and shapes, and its
  Hugging Face names and shapes are exactly the tensors `transformers` makes for the config."""
  model = make_hf_model(arch, **overrides)
  cfg = ModelConfig.from_hf_dict(model.config.to_dict())
  built = jax.tree_util.tree_map(lambda x: tuple(x.shape), param_shapes(cfg))
  assert built == schema.shapes(cfg)
  hf = {name: tuple(p.shape) for name, p in model.state_dict().items()
        if not name.endswith("rotary_emb.inv_freq")}
  if cfg.tie_word_embeddings:
    hf.pop("lm_head.weight", None)  # the tied head is the embedding itself
  ours = {name: leaf.hf_shape(cfg) for leaf in schema.leaves(cfg) for name in leaf.hf_names(cfg)}
  assert ours == hf
  # Every leaf has its logical axes, one per dimension (what the sharding rules read).
  axes = logical_axes(param_shapes(cfg))
  for path, leaf in schema.BY_PATH.items():
    if leaf.present(cfg):
      node = axes
      for k in path:
        node = node[k]
      assert len(node) == len(leaf.shape(cfg))
  assert cfg.num_params() == sum(int(np.prod(s)) for s in hf.values())
