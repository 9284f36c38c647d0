"""gs:// workdirs through the real Cloud Storage code paths (gcsfs, orbax + tensorstore's gcs
driver) against a local emulator (tests/gcs_emulator.py): atomic writes and reads, staging,
the metrics writer, a Trainer checkpoint saved and restored, and a whole `sft` run that is
killed by nothing but its step budget and resumed with the same command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")

import gcs_emulator  # noqa: E402  (tests/ is on sys.path under pytest)

from aci_jax import fileio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = f"gs://{gcs_emulator.BUCKET}"


@pytest.fixture(scope="module")
def gcs():
  with gcs_emulator.running() as env:
    yield env


def objects(prefix: str) -> list[str]:
  """Object names under gs://bucket/prefix, listed with google-cloud-storage (not our code)."""
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage
  client = storage.Client(project="test", credentials=AnonymousCredentials())
  return sorted(b.name for b in client.list_blobs(gcs_emulator.BUCKET, prefix=prefix))


def test_atomic_writes_reads_and_staging(gcs, tmp_path, monkeypatch):
  run = f"{BUCKET}/fileio"
  assert fileio.is_remote(run) and not fileio.is_remote(str(tmp_path))
  assert fileio.join(run, "eval", "x.json") == f"{run}/eval/x.json"
  fileio.write_json(fileio.join(run, "summary.json"), {"a": 1})
  with pytest.raises(RuntimeError):
    with fileio.atomic_open(fileio.join(run, "summary.json")) as f:
      f.write('{"a": 2, "half')
      raise RuntimeError("killed mid-write")
  assert fileio.read_json(fileio.join(run, "summary.json")) == {"a": 1}  # old object kept
  assert objects("fileio/") == ["fileio/summary.json"]  # and nothing else uploaded
  fileio.write_jsonl(fileio.join(run, "t.jsonl"), [{"x": 1}, {"x": 2}])
  assert list(fileio.iter_jsonl(fileio.join(run, "t.jsonl"))) == [(1, {"x": 1}), (2, {"x": 2})]
  with pytest.raises(fileio.DataError, match="no such file"):
    list(fileio.iter_jsonl(fileio.join(run, "missing.jsonl")))
  assert fileio.listdir(run) == ["summary.json", "t.jsonl"]
  assert fileio.listdir(fileio.join(run, "nothing")) == []

  # upload_dir replaces the remote directory; stage brings it back to local disk, and only
  # downloads again when the remote copy changed.
  src = tmp_path / "hf"
  (src / "sub").mkdir(parents=True)
  (src / "config.json").write_text('{"v": 1}')
  (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
  fileio.write_text(fileio.join(run, "hf", "stale.txt"), "from an older export")
  fileio.upload_dir(str(src), fileio.join(run, "hf"), last=("config.json",))
  assert objects("fileio/hf/") == ["fileio/hf/config.json", "fileio/hf/sub/w.bin"]
  monkeypatch.setenv("ACI_JAX_STAGING_DIR", str(tmp_path / "staging"))
  local = fileio.stage(fileio.join(run, "hf"))
  assert local.startswith(str(tmp_path / "staging"))
  assert open(os.path.join(local, "config.json")).read() == '{"v": 1}'
  assert open(os.path.join(local, "sub", "w.bin"), "rb").read() == b"\x00\x01"
  fileio.write_text(fileio.join(run, "hf", "config.json"), '{"v": 22}')
  assert fileio.stage(fileio.join(run, "hf")) == local
  assert open(os.path.join(local, "config.json")).read() == '{"v": 22}'
  with pytest.raises(FileNotFoundError):
    fileio.stage(fileio.join(run, "no-such-dir"))


def test_metrics_writer_mirrors_to_the_bucket(gcs):
  from aci_jax.metrics import MetricsWriter, read_jsonl

  run = f"{BUCKET}/metrics"
  w = MetricsWriter(run, sync_seconds=0.0)  # sync on every write
  w.write(1, {"loss": 2.0})
  w.write(2, {"loss": 1.5, "bad": float("nan")})
  assert read_jsonl(f"{run}/metrics.jsonl") == [{"step": 1, "loss": 2.0},
                                                {"step": 2, "bad": None, "loss": 1.5}]
  assert any(n.startswith("metrics/tb/events.out.tfevents.") for n in objects("metrics/tb/"))
  w.reset([{"step": 1, "loss": 2.0}])  # a resume from the checkpoint at step 1
  mirror = w.local
  assert os.path.isdir(mirror)
  w.close()
  assert read_jsonl(f"{run}/metrics.jsonl") == [{"step": 1, "loss": 2.0}]
  assert not os.path.exists(mirror)  # closing removes the local mirror (no /tmp leak per run)
  # A new writer (a new process after preemption) continues the remote file.
  w = MetricsWriter(run, tensorboard=False, sync_seconds=3600.0)
  w.write(2, {"loss": 1.25})
  assert len(read_jsonl(f"{run}/metrics.jsonl")) == 1  # not synced yet: the bucket lags
  w.close()
  assert read_jsonl(f"{run}/metrics.jsonl") == [{"step": 1, "loss": 2.0},
                                                {"step": 2, "loss": 1.25}]


def _tiny_config(steps: int):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  try:
    import sft_toy
  finally:
    sys.path.pop(0)
  c = sft_toy.get_config()
  c.progress = False
  c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
  c.data.toy_examples, c.data.seq_len = 32, 64
  c.optim.warmup_steps = 0
  c.checkpoint.max_to_keep = 2
  return c


def test_trainer_checkpoint_save_and_restore_on_gcs(gcs):
  from aci_jax.train.runner import Trainer

  run = f"{BUCKET}/trainer"
  t = Trainer(_tiny_config(2), run)
  assert t.restore_or_init() is False
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (8, 16)).astype(np.int32)
  batch = dict(tokens=tokens, positions=np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16)),
               valid=np.ones((8, 16), bool), loss_mask=np.ones((8, 16), np.float32))
  t.log(1, t.train_step(batch))
  t.meta["data_cursor"] = 8
  t.save()
  saved = jax.device_get(t.state)
  t.close()
  assert "trainer/checkpoints/1/commit_success.txt" in objects("trainer/checkpoints/1/")

  again = Trainer(_tiny_config(2), run)
  assert again.restore_or_init() is True
  assert again.step == 1 and again.meta["data_cursor"] == 8
  for a, b in zip(jax.tree.leaves(jax.device_get(again.state)), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in again.meta["metrics_history"]] == [1]
  again.close()


def test_sft_run_in_a_bucket_resumes_with_the_same_command(gcs, tmp_path):
  """`--workdir gs://...` end to end: config.json, checkpoints, metrics, TensorBoard and the HF
  export land in the bucket; re-running the command with more steps resumes from there."""
  env = {**os.environ, **gcs, "JAX_PLATFORMS": "cpu", "ACI_JAX_STAGING_DIR": str(tmp_path)}
  run = f"{BUCKET}/sft"

  def main(steps):
    cmd = [sys.executable, "-m", "aci_jax.main", "--config", "configs/sft_toy.py",
           f"--config.train.steps={steps}", "--config.train.batch_size=8",
           "--config.train.log_every=1", "--config.checkpoint.every=2",
           "--config.data.toy_examples=32", "--config.data.seq_len=64",
           "--config.optim.warmup_steps=0", "--config.progress=False", "--workdir", run]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stderr

  main(4)
  names = objects("sft/")
  assert "sft/config.json" in names and "sft/data/toy_sft.jsonl" in names
  assert "sft/checkpoints/4/commit_success.txt" in names
  assert any(n.startswith("sft/tb/events.out.tfevents.") for n in names)
  assert "sft/export/step_4/config.json" in names
  assert "sft/export/step_4/model.safetensors" in names
  assert json.loads(fileio.read_text(f"{run}/config.json"))["train"]["steps"] == 4

  log = main(6)
  assert "resumed at step 4" in log
  assert "sft/checkpoints/6/commit_success.txt" in objects("sft/checkpoints/6/")
  from aci_jax.metrics import read_jsonl
  assert [r["step"] for r in read_jsonl(f"{run}/metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

  # The exported policy is a HF directory that our loader reads back from a local copy.
  from aci_jax.model import ModelConfig
  cfg = ModelConfig.from_pretrained(fileio.stage(f"{run}/export/step_6"))
  assert cfg.num_layers == 2 and cfg.hidden_size == 64
