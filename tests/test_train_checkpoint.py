"""Checkpointer: an async save followed at once by a step that donates the saved state still
writes the saved values; keep-last-N; restore onto a different mesh; a checkpoint of another
model is refused with a clear error."""

import jax
import numpy as np
import pytest

from aci_jax.model import ModelConfig, init_params
from aci_jax.parallel import MeshConfig, make_mesh
from aci_jax.train import (LossConfig, OptimConfig, abstract_train_state, init_train_state,
                           make_optimizer, make_train_step, shard_batch)
from aci_jax.train.checkpoint import CheckpointError, Checkpointer

CFG = ModelConfig(arch="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)


def batch(seed):
  rng = np.random.default_rng(seed)
  t = rng.integers(0, 64, (8, 10)).astype(np.int32)
  return dict(tokens=t, positions=np.broadcast_to(np.arange(10, dtype=np.int32), t.shape),
              valid=np.ones(t.shape, bool), loss_mask=np.ones(t.shape, np.float32))


def test_async_save_survives_donation_and_restores_on_another_mesh(tmp_path):
  mesh = make_mesh(MeshConfig(data=2, fsdp=4))
  tx, sched = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, decay_steps=10))
  state, sh = init_train_state(init_params(CFG, jax.random.key(0)), tx, mesh, seed=7)
  step = make_train_step(CFG, LossConfig(policy="sft_nll"), tx, sched, mesh, sh)
  ck = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2, async_save=True)
  saved = {}
  for i in range(4):
    state, _ = step(state, shard_batch(batch(i), mesh))
    saved[i + 1] = jax.device_get(state)  # host copy of exactly what is being saved
    ck.save(i + 1, state, {"data_cursor": 8 * (i + 1), "em_iteration": 0})
    # The next loop iteration donates `state` while the write may still be in flight.
  ck.wait()
  assert ck.all_steps() == [3, 4]  # keep-last-2

  # Restore onto a different layout (fsdp 2 x tensor 4): values equal, sharding is the new one.
  other = make_mesh(MeshConfig(fsdp=2, tensor=4))
  abstract, _ = abstract_train_state(CFG, tx, other)
  reader = Checkpointer(str(tmp_path / "ckpt"))
  for s in (3, 4):
    restored, meta = reader.restore(abstract, s)
    assert meta["data_cursor"] == 8 * s and meta["step"] == s
    for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(saved[s])):
      np.testing.assert_array_equal(a, b)
    q = restored.params["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.mesh.shape == other.shape
    assert len(set(str(x.index) for x in q.addressable_shards)) > 1
  ck.close()

  # A checkpoint of a different model is refused, naming the directory and the step.
  bigger = CFG.replace(hidden_size=48)
  abstract_big, _ = abstract_train_state(bigger, tx, mesh)
  with pytest.raises(CheckpointError, match="does not match this run"):
    reader.restore(abstract_big)
  reader.close()
  empty = Checkpointer(str(tmp_path / "empty"))
  with pytest.raises(CheckpointError, match="no checkpoint"):
    empty.restore(abstract)
  empty.close()
