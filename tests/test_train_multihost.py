"""Two local processes (2 CPU devices each, gloo collectives, `jax.distributed.initialize` through
config.dist) run the same SFT job as one process with 4 devices, through the real entry point:
same losses at every step, same final parameters, multi-host checkpoints and export."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from aci_jax.metrics import read_jsonl
from aci_jax.model.safetensors_io import SafetensorsFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir, devices, *extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "aci_jax.main", "--config",
         os.path.join(ROOT, "configs", "sft_toy.py"), "--workdir", str(workdir),
         f"--config.train.steps={STEPS}", "--config.train.log_every=1",
         "--config.checkpoint.every=2", "--config.progress=False", "--config.train.batch_size=8",
         "--config.data.toy_examples=32", "--config.data.seq_len=48", "--config.mesh.data=2",
         "--config.mesh.fsdp=2", "--config.optim.warmup_steps=1", *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def read_export(workdir):
  f = SafetensorsFile(os.path.join(workdir, "export", f"step_{STEPS}", "model.safetensors"))
  return {name: np.array(f.get(name)) for name in f.keys()}


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  single = launch(tmp_path / "one", 4)
  out1, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out1[-3000:]

  port = free_port()
  procs = [launch(tmp_path / "two", 2, f"--config.dist.coordinator=localhost:{port}",
                  "--config.dist.num_processes=2", f"--config.dist.process_id={i}")
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outs[1] or "process 0 of 2" in outs[0]

  m1 = read_jsonl(tmp_path / "one" / "metrics.jsonl")
  m2 = read_jsonl(tmp_path / "two" / "metrics.jsonl")  # written by process 0 only
  assert [r["step"] for r in m2] == list(range(1, STEPS + 1))
  for a, b in zip(m1, m2):
    for key in ("loss", "grad_norm", "tokens", "lr"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")
  w1, w2 = read_export(tmp_path / "one"), read_export(tmp_path / "two")
  assert w1.keys() == w2.keys()
  for name in w1:
    np.testing.assert_allclose(w2[name], w1[name], atol=1e-6, err_msg=name)
  # Training moved the weights (so agreement is not trivially about the initialisation).
  assert m2[-1]["loss"] < m2[0]["loss"] - 0.1
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["2", "4"]
