"""Exact resume: a run SIGKILLed at random moments and restarted ends bitwise equal (params,
optimizer state, metrics history) to an uninterrupted run; every checkpoint that survives a kill
loads and equals the uninterrupted run's checkpoint of the same step. Also: `export` mode."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from aci_jax.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 14


def cmd(workdir, *extra):
  return [sys.executable, "-m", "aci_jax.main", "--config", os.path.join(ROOT, "configs",
                                                                         "sft_toy.py"),
          "--workdir", str(workdir), f"--config.train.steps={STEPS}", "--config.train.log_every=1",
          "--config.checkpoint.every=1", "--config.checkpoint.max_to_keep=40",
          "--config.optim.warmup_steps=3", "--config.progress=False",
          "--config.data.toy_examples=40", "--config.train.batch_size=8",
          "--config.data.seq_len=48", "--config.export.at_end=True", *extra]


CACHE = {}


def env():
  """Two devices (a sharded state, cheaper to compile than eight) and a persistent compilation
  cache shared by all launches of the test (what a preempted job on a TPU VM does as well):
  restarts then cost start-up, not compilation."""
  e = dict(os.environ)
  e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  e["JAX_COMPILATION_CACHE_DIR"] = CACHE["dir"]
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return e


def restore_raw(workdir, step):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                              options=ocp.CheckpointManagerOptions(read_only=True),
                              item_names=("state", "meta"))
  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  meta=ocp.args.JsonRestore()))
  mgr.close()
  return jax.device_get(out["state"]), out["meta"]


def assert_state_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for (path, x), y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def without_perf(records):
  return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def committed_steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints",
                                                                          "*"))
                if os.path.basename(p).isdigit())


def metrics_lines(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for _ in f)
  except FileNotFoundError:
    return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path):
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
  CACHE["dir"] = str(tmp_path / "jax_cache")
  subprocess.run(cmd(ref_dir), check=True, env=env(), cwd=tmp_path, capture_output=True)
  ref_steps = committed_steps(ref_dir)
  assert ref_steps == list(range(1, STEPS + 1))

  rng = random.Random(20261121)
  kills, launches = [], 0
  while True:
    launches += 1
    assert launches < 12, "the killed run never finished"
    proc = subprocess.Popen(cmd(run_dir), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if len(kills) < 2:
      if len(kills) == 0:
        time.sleep(rng.uniform(0.5, 3.0))  # during start-up / compilation
      else:  # during training: once step `target` is logged, at a random moment after it
        target = rng.randint(2, STEPS // 2)
        deadline = time.time() + 180
        while proc.poll() is None and metrics_lines(run_dir) < target and time.time() < deadline:
          time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps = committed_steps(run_dir)
        kills.append(steps[-1] if steps else 0)
        # Whatever survived the kill loads, and equals the reference at that step.
        if steps:
          got, meta = restore_raw(run_dir, steps[-1])
          want, want_meta = restore_raw(ref_dir, steps[-1])
          assert_state_equal(got, want)
          assert meta["data_cursor"] == want_meta["data_cursor"]
          assert without_perf(meta["metrics_history"]) == without_perf(
              want_meta["metrics_history"])
        continue
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    break
  assert len(kills) == 2, kills
  # Killed mid-training at least once (not only before the first checkpoint).
  assert any(0 < k < STEPS for k in kills), kills

  got, meta = restore_raw(run_dir, STEPS)
  want, want_meta = restore_raw(ref_dir, STEPS)
  assert_state_equal(got, want)
  assert meta["data_cursor"] == want_meta["data_cursor"] == STEPS * 8
  assert without_perf(read_jsonl(run_dir / "metrics.jsonl")) == without_perf(
      read_jsonl(ref_dir / "metrics.jsonl"))
  assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, STEPS + 1))
  assert glob.glob(str(run_dir / "tb" / "events.out.tfevents.*"))
  # The final HF exports are byte-identical.
  a = (ref_dir / "export" / f"step_{STEPS}" / "model.safetensors").read_bytes()
  b = (run_dir / "export" / f"step_{STEPS}" / "model.safetensors").read_bytes()
  assert a == b

  # export mode: an earlier checkpoint of the reference run -> HF dir with those params.
  out = tmp_path / "hf_step5"
  res = subprocess.run(cmd(ref_dir, "--config.mode=export", "--config.export.step=5",
                           f"--config.export.dir={out}"), env=env(), cwd=tmp_path,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  from aci_jax.model import ModelConfig
  from aci_jax.model.weights import load_params
  params = load_params(str(out), ModelConfig.from_pretrained(str(out)))
  state5, _ = restore_raw(ref_dir, 5)
  assert_state_equal(params, state5.params if hasattr(state5, "params") else state5["params"])
