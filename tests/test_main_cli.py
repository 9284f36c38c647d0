"""The entry point: one-line errors with exit status 2, the table of modes, the default workdir,
metrics to TensorBoard and JSONL (multi-host detection: tests/test_multihost_start.py)."""

import glob
import os
import subprocess
import sys

import pytest

from aci_jax import main as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "sft_toy.py")


def run_main(*args, cwd=None):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"  # cheaper compile
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "aci_jax.main", *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def error_lines(res):
  return [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("I1")]


@pytest.mark.parametrize("args, needle", [
    (["--config.train.nope=3"], "unknown config key '--config.train.nope'"),
    (["--config.nosection.x=1"], "unknown config key '--config.nosection.x'"),
    (["--config.train.steps=abc"], "--config.train.steps=abc"),
    (["--config.loss.aggregation=mean"], "config.loss: aggregation must be one of"),
    (["--config.loss.policy=ppo_clip"], "config.loss.policy must be 'sft_nll' in mode sft"),
    (["--config.mode=nope"], "config.mode='nope' is not a registered mode; registered:"),
    (["--config.mesh.tensor=3"], "config.mesh:"),
    (["--config.data.train_path=/no/such.jsonl"], "/no/such.jsonl: no such file"),
    (["positional"], "unexpected arguments ['positional']"),
], ids=lambda v: str(v)[:30])
def test_bad_config_fails_with_one_line(tmp_path, args, needle):
  res = run_main("--config", CONFIG, "--workdir", str(tmp_path / "w"), *args)
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
  assert "Traceback" not in res.stderr


def test_missing_config_file_fails_with_one_line(tmp_path):
  res = run_main("--config", str(tmp_path / "none.py"))
  assert res.returncode == 2
  assert error_lines(res) == [f"error: cannot load --config: [Errno 2] No such file or "
                              f"directory: '{tmp_path / 'none.py'}'"]


def test_default_workdir_metrics_jsonl_and_tensorboard(tmp_path):
  res = run_main("--config", CONFIG, "--config.train.steps=3", "--config.train.log_every=1",
                 "--config.optim.warmup_steps=1", "--config.data.toy_examples=16",
                 "--config.train.batch_size=8", "--config.data.seq_len=32", cwd=tmp_path)
  assert res.returncode == 0, res.stderr[-3000:]
  (workdir,) = glob.glob(str(tmp_path / "runs" / "sft_toy-*"))
  records = [__import__("json").loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert all(r["loss"] > 0 and r["tokens"] > 0 for r in records)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(os.path.join(workdir, "tb"))
  acc.Reload()
  loss = [(e.step, e.value) for e in acc.Scalars("loss")]
  assert [s for s, _ in loss] == [1, 2, 3]
  assert abs(loss[0][1] - records[0]["loss"]) < 1e-5
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.isdir(os.path.join(workdir, "export", "step_3"))
  # A second default run gets a fresh folder, never the first one's.
  assert M.default_workdir(CONFIG) != workdir


def test_every_mode_in_the_table_resolves():
  assert set(M.MODES) == {"sft", "export", "autocode"}
  for name, (run_path, validate_path) in M.MODES.items():
    assert callable(M.resolve(run_path)), name
    assert validate_path is None or callable(M.resolve(validate_path)), name
  from aci_jax.em.modes import autocode, validate
  assert M.MODES["autocode"] == ("aci_jax.em.modes:autocode", "aci_jax.em.modes:validate")
  assert M.resolve(M.MODES["autocode"][0]) is autocode
  assert M.resolve(M.MODES["autocode"][1]) is validate


def test_a_negative_warmup_example_count_is_one_line(tmp_path):
  # train[:n] with n < 0 would drop problems silently; 0 means every training problem.
  res = run_main("--config", os.path.join(ROOT, "configs", "default.py"),
                 "--workdir", str(tmp_path / "w"), "--config.task.warmup_examples=-5")
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert lines == ["error: config.task.warmup_examples must be >= 0 (0 = every training "
                   "problem), got -5"], lines
  assert not (tmp_path / "w").exists()


def test_a_mode_validator_error_is_one_line(tmp_path):
  # The autocode validator rejects the value before any workdir is made.
  res = run_main("--config", os.path.join(ROOT, "configs", "default.py"),
                 "--workdir", str(tmp_path / "w"), "--config.em.form=nope")
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: config.em: "), lines
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("caps, message", [
    ("('mul_small',)", "error: config.task: per-family cap 'mul_small': expected 'family:n'"),
    ("('mull:5',)", "error: config.task: unknown toy family 'mull'"),
])
def test_a_bad_per_family_cap_is_one_line(tmp_path, caps, message):
  res = run_main("--config", os.path.join(ROOT, "configs", "default.py") + ":rare_code",
                 "--workdir", str(tmp_path / "w"), "--config.task.families=('add', 'mul_small')",
                 "--config.warmup.gate=()",  # the variant's probes name its own families
                 f"--config.task.train_caps={caps}", "--config.progress=False")
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(message), lines
  assert "Traceback" not in res.stderr


def test_a_toy_family_too_small_for_the_count_asked_is_one_line(tmp_path):
  # mul_small (2..9 times 10..99) has 720 problems in all: 2,000 distinct training ones cannot
  # exist, and the run must say so in one line, not a traceback from the data code.
  res = run_main("--config", os.path.join(ROOT, "configs", "default.py"),
                 "--workdir", str(tmp_path / "w"), "--config.task.families=('mul_small',)",
                 "--config.warmup.gate=()",  # the default's probes name its own families
                 "--config.task.train_per_family=2000", "--config.progress=False")
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: config.task: toy family 'mul_small' has fewer than 2000 "
                             "distinct 'train' problems"), lines[0]
  assert "Traceback" not in res.stderr


def test_the_default_gate_with_other_families_is_one_line(tmp_path):
  # configs/default.py's warm-up gate probes add, compare, mul and powmod: a run on other
  # families must say how to turn it off, before any workdir is made.
  res = run_main("--config", os.path.join(ROOT, "configs", "default.py"),
                 "--workdir", str(tmp_path / "w"), "--config.task.families=('mul_small',)",
                 "--config.progress=False")
  lines = error_lines(res)
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(
      "error: config.warmup.gate entry 'add:reason': 'add' is not one of this run's families"), lines
  assert lines[0].endswith("--config.warmup.gate=())"), lines
  assert not (tmp_path / "w").exists()


def test_importing_main_loads_no_mode_and_no_jax():
  # A bad flag must fail before JAX and the mode modules load (seconds on a busy machine).
  code = ("import sys, aci_jax.main; "
          "print(sorted(m for m in ('jax', 'aci_jax.em.modes', 'aci_jax.train.modes') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"
