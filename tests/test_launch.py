"""The Cloud TPU launcher: the gcloud command lines it builds (--dry-run), and its remote `run`
and `stop` commands executed for real by bash on this machine, as a worker would run them."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from aci_jax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = ["--tpu", "my-pod", "--zone", "us-central2-b", "--project", "my-proj"]
SPACED = "--config.task.train_path=gs://b/data/train set.jsonl"


def dry_run(*argv):
  p = subprocess.run([sys.executable, "-m", "aci_jax.launch", "--dry-run", *argv], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  return p.returncode, [shlex.split(line) for line in p.stdout.splitlines()], p.stderr


def option(cmd, name):
  values = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
  assert len(values) == 1, (name, cmd)
  return values[0]


def test_create_and_delete_commands():
  rc, cmds, _ = dry_run("create", *TPU, "--accelerator-type", "v4-32", "--spot")
  assert rc == 0 and cmds == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "my-pod", "--zone=us-central2-b",
      "--project=my-proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
      "--spot"]]
  rc, cmds, _ = dry_run("create", *TPU, "--accelerator-type", "v5litepod-64", "--queued")
  assert cmds[0][:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-pod"]
  assert option(cmds[0], "--node-id") == "my-pod"
  assert option(cmds[0], "--runtime-version") == "v2-alpha-tpuv5-lite"
  rc, cmds, _ = dry_run("delete", *TPU)
  assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-pod",
                   "--zone=us-central2-b", "--project=my-proj", "--quiet"]]


def test_setup_copies_head_and_installs_on_every_worker():
  rc, cmds, _ = dry_run("setup", *TPU, "--source", ROOT)
  assert rc == 0 and len(cmds) == 3
  git, scp, ssh = cmds
  assert git[:4] == ["git", "-C", ROOT, "archive"] and git[-1] == "HEAD"
  tarball = option(git, "--output")
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and tarball in scp
  assert "--worker=all" in scp and "--worker=all" in ssh
  remote = option(ssh, "--command")
  assert "jax[tpu]" in remote and '-e "$HOME/aci_jax[gcs]"' in remote


def test_run_builds_one_command_for_all_workers_with_quoting_and_env():
  rc, cmds, err = dry_run("run", *TPU, "--env", "HF_TOKEN=hf_x", "--env", "NOTE=two words",
                          "--", "--config", "configs/sft_toy.py", "--workdir", "gs://b/run",
                          SPACED)
  assert rc == 0, err
  [cmd] = cmds
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
  assert "--worker=all" in cmd
  words = shlex.split(option(cmd, "--command"))
  i = words.index("aci_jax.main")
  assert words[i + 1:i + 6] == ["--config", "configs/sft_toy.py", "--workdir", "gs://b/run",
                                SPACED]
  assert "HF_TOKEN=hf_x" in words and "NOTE=two words" in words and "setsid" in words


@pytest.mark.parametrize("argv, needle", [
    (["run", *TPU, "--", "--config", "c.py"], "--workdir is required"),
    (["run", *TPU], "--config FILE"),
    (["run", *TPU, "--env", "1X=y", "--", "--config", "c", "--workdir", "w"], "KEY=VALUE"),
    (["run", "--tpu", "My_TPU", "--zone", "us-central2-b"], "--tpu 'My_TPU'"),
    (["logs", *TPU, "--worker", "first"], "--worker must be"),
    (["create", *TPU, "--accelerator-type", "tpu7-8"], "pass --version"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_error_line(argv, needle):
  rc, cmds, err = dry_run(*argv)
  assert rc == 2 and cmds == []
  assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def _state(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except FileNotFoundError:
    return "gone"


def test_remote_run_and_stop_commands_work_in_bash(tmp_path):
  """What a worker executes: the run starts detached with exactly the user's argv and env;
  stop ends its whole process group."""
  home = tmp_path / "home"
  home.mkdir()
  os.symlink(ROOT, home / "aci_jax")
  os.symlink(os.path.dirname(os.path.dirname(sys.executable)), home / "aci_venv")
  workdir = tmp_path / "run dir"
  _, [run], _ = dry_run("run", *TPU, "--env", "NOTE=two words", "--", "--config",
                        "configs/sft_toy.py", "--config.train.steps=100000",
                        "--config.progress=False", "--workdir", str(workdir), SPACED)
  _, [stop], _ = dry_run("stop", *TPU)
  env = {**os.environ, "HOME": str(home), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(["bash", "-c", option(run, "--command")], env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0 and "started on" in out.stdout, out.stderr
  pid = int((home / "aci_jax.pid").read_text())
  try:
    deadline = time.monotonic() + 60
    # The pid is setsid's; it execs nohup, which execs env, which execs Python: wait for the
    # last exec (the cmdline of every one of them contains "aci_jax.main").
    while True:
      argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")[:-1]
      if argv and os.path.basename(argv[0]).startswith("python"):
        break
      assert time.monotonic() < deadline, "the run did not start"
      time.sleep(0.05)
    assert argv[1:] == ["-m", "aci_jax.main", "--config", "configs/sft_toy.py",
                        "--config.train.steps=100000", "--config.progress=False",
                        "--workdir", str(workdir), SPACED]
    environ = open(f"/proc/{pid}/environ", "rb").read().decode().split("\0")
    assert "NOTE=two words" in environ and "PYTHONUNBUFFERED=1" in environ
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and group
    out = subprocess.run(["bash", "-c", option(stop, "--command")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "stopped on" in out.stdout, out
    deadline = time.monotonic() + 60
    while _state(pid) not in ("gone", "Z"):
      assert time.monotonic() < deadline, "stop did not end the run"
      time.sleep(0.05)
  finally:
    if _state(pid) not in ("gone", "Z"):
      os.killpg(pid, signal.SIGKILL)
