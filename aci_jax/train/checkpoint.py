"""Orbax checkpoints of the whole training run, with exact resume.

One checkpoint (directory `<workdir>/checkpoints/<step>/`) holds two items:
  state: the `TrainState` pytree (params, optimizer state, step, RNG key data), each array saved
         in its sharded layout (every host writes its own shards; restore reshards to the mesh
         it is given);
  meta:  JSON: step, EM iteration, data cursor, metrics history, the run config, free-form extras.

Crash safety comes from orbax's commit protocol: a checkpoint is written into a temporary
directory (`<step>.orbax-checkpoint-tmp-*`) and renamed to `<step>` only after every file and the
commit marker are on disk; `latest_step()` never lists an uncommitted one, and leftover temporary
directories are deleted when the next run opens the manager. A SIGKILL at any moment therefore
leaves the previous committed checkpoint as the latest (tests/test_train_resume.py kills runs at
random moments and checks this). On Cloud Storage (`gs://` directories), where nothing can be
renamed, orbax marks a finished checkpoint with a `commit_success.txt` object instead, with the
same guarantee. Saves are asynchronous: device->host copies happen before
`save` returns (so the donated state may be overwritten by the next step right away) and the file
writes overlap with the following train steps.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from aci_jax import fileio
from aci_jax.train.step import TrainState

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint that exists but does not match what the run expects."""


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    # gs:// strings go to orbax as they are: it and tensorstore write to Cloud Storage directly.
    self.directory = directory if fileio.is_remote(directory) else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: TrainState, meta: dict[str, Any], *, force: bool = True
           ) -> bool:
    """Starts an (asynchronous) save of `state` and `meta` as checkpoint `step`."""
    meta = copy.deepcopy({**meta, "step": int(step)})  # the caller keeps mutating its history
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict]:
    """(state placed by the shardings in `abstract_state`, meta) of `step` (default latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"checkpoint {self.directory}/{step} does not match this run's "
                            f"model/optimizer config: {e}".splitlines()[0]) from e
    state, meta = out["state"], out["meta"]
    if int(meta.get("step", -1)) != step or int(jax.device_get(state.step)) != step:
      raise CheckpointError(f"checkpoint {step}: meta step {meta.get('step')} and state step "
                            f"{int(jax.device_get(state.step))} disagree")
    log.info("restored checkpoint %d from %s", step, self.directory)
    return state, meta

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
