"""Cloud TPU VMs: create a TPU, install aci_jax on every worker, start a run on all of them.

    python -m aci_jax.launch [--dry-run] SUBCOMMAND --tpu NAME --zone ZONE [--project P] ...

    create   --accelerator-type v5p-8 [--version RUNTIME] [--spot] [--queued]
    setup    [--source DIR]        copy the checkout (git HEAD) to every worker, install
                                   jax[tpu] and aci_jax[gcs] into ~/aci_venv there
    run      [--env K=V ...] [--sudo] [--log NAME] -- --config ... --workdir gs://...
                                   the same `python -m aci_jax.main` on every worker, in the
                                   background (setsid + nohup), stdout+stderr to ~/NAME.log
    logs     [--worker N|all] [--follow] [--lines N]
    stop     [--log NAME]          SIGTERM to the run's process group on every worker
    delete   [--queued]

Every remote step is one `gcloud compute tpus tpu-vm ssh NAME --worker=all --command CMD`, so a
single-host TPU (one worker) and a multi-host slice (v4-32, v5e-64, ...: one worker per host)
are driven the same way; on a slice each host runs the same command and
`jax.distributed.initialize()` (aci_jax/parallel/multihost.py, config.dist.multihost="auto")
finds its peers from the TPU metadata. `--dry-run` prints the exact commands instead of running
them, one per line, quoted for a POSIX shell. Details and presets: docs/tpu.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

VENV = "~/aci_venv"  # on each worker
CHECKOUT = "~/aci_jax"
# TPU VM runtime images (--version) for JAX, by accelerator-type prefix.
RUNTIME_VERSIONS = {"v4-": "tpu-ubuntu2204-base", "v5litepod-": "v2-alpha-tpuv5-lite",
                    "v5p-": "v2-alpha-tpuv5", "v6e-": "v2-alpha-tpuv6e"}
# jax[tpu] within the range pyproject.toml supports; libtpu comes with it.
JAX_TPU = "jax[tpu]>=0.10,<0.12"
RUN_ENV = {"PYTHONUNBUFFERED": "1"}  # log lines reach the log file as they are printed

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a GCE resource name
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LaunchError(Exception):
  """Bad input; reported as one `error:` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line instead of usage + message
    raise LaunchError(message)


def _home(path: str) -> str:
  """A ~/ path as the remote shell should see it: "$HOME/..." (expands inside double quotes)."""
  return '"$HOME/' + path[2:] + '"' if path.startswith("~/") else shlex.quote(path)


def _gcloud(args, *rest: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", *rest, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def ssh(args, command: str, worker: str = "all") -> list[str]:
  """argv of `gcloud ... tpu-vm ssh NAME --worker=W --command=COMMAND`."""
  return _gcloud(args, "tpu-vm", "ssh", args.tpu) + [f"--worker={worker}",
                                                     f"--command={command}"]


def _log_path(name: str) -> str:
  return f"~/{name}.log"


# ------------------------------------------------------------------------ subcommands


def create_commands(args) -> list[list[str]]:
  if not args.version:
    prefix = next((p for p in RUNTIME_VERSIONS if args.accelerator_type.startswith(p)), None)
    if prefix is None:
      raise LaunchError(f"create: no default runtime for --accelerator-type "
                        f"{args.accelerator_type!r} (known: {', '.join(RUNTIME_VERSIONS)}); "
                        "pass --version")
    args.version = RUNTIME_VERSIONS[prefix]
  if args.queued:
    # A queued resource waits for capacity instead of failing; the node appears when granted.
    cmd = _gcloud(args, "queued-resources", "create", args.tpu) + [
        f"--node-id={args.tpu}", f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.version}"]
  else:
    cmd = _gcloud(args, "tpu-vm", "create", args.tpu) + [
        f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  if args.spot:
    cmd.append("--spot")
  return [cmd]


def setup_commands(args) -> list[list[str]]:
  tarball = os.path.join(tempfile.gettempdir(), "aci_jax-src.tar.gz")
  remote = (
      f"set -e; mkdir -p {_home(CHECKOUT)}; tar -xzf ~/aci_jax-src.tar.gz -C {_home(CHECKOUT)}; "
      f"python3 -m venv {_home(VENV)} || (sudo apt-get update -q && "
      f"sudo apt-get install -y -q python3-venv && python3 -m venv {_home(VENV)}); "
      f"{_home(VENV + '/bin/pip')} install -q -U pip; "
      f"{_home(VENV + '/bin/pip')} install -q {shlex.quote(JAX_TPU)}; "
      f"{_home(VENV + '/bin/pip')} install -q -e {_home(CHECKOUT + '[gcs]')}; "
      f"{_home(VENV + '/bin/python')} -c 'import jax; print(jax.process_index(), "
      f"jax.local_device_count(), jax.device_count())'")
  return [
      ["git", "-C", args.source, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
      _gcloud(args, "tpu-vm", "scp", tarball, f"{args.tpu}:aci_jax-src.tar.gz") + [
          "--worker=all"],
      ssh(args, remote),
  ]


def run_command(args) -> list[list[str]]:
  main_args = list(args.main_args)
  if main_args[:1] == ["--"]:
    main_args = main_args[1:]
  if not any(a == "--config" or a.startswith("--config=") for a in main_args):
    raise LaunchError("run: pass the run's flags after `--`, at least --config FILE and "
                      "--workdir DIR")
  if not any(a == "--workdir" or a.startswith("--workdir=") for a in main_args):
    raise LaunchError("run: --workdir is required (every worker must see the same one: use "
                      "gs://BUCKET/PATH on multi-host slices)")
  env = dict(RUN_ENV)
  for item in args.env:
    key, sep, value = item.partition("=")
    if not sep or not _ENV_KEY.match(key):
      raise LaunchError(f"--env {item!r}: expected KEY=VALUE")
    env[key] = value
  python = [*(["sudo", "-E"] if args.sudo else []), "env",
            *(f"{k}={v}" for k, v in env.items()),
            f"{VENV}/bin/python", "-m", "aci_jax.main", *main_args]
  line = " ".join(_home(a) if a.startswith("~/") else shlex.quote(a) for a in python)
  log = _home(_log_path(args.log))
  pid = _home(f"~/{args.log}.pid")
  # setsid: the run gets its own process group, so `stop` ends it with every child it started
  # (sandbox and grader workers) and an ssh hang-up ends none of them.
  # `cd || exit` on its own: with `cd && cmd &` the shell would background the whole list and
  # $! would be that subshell, not the run.
  remote = (f"cd {_home(CHECKOUT)} || exit 1; setsid nohup {line} > {log} 2>&1 < /dev/null & "
            f"echo $! > {pid}; echo started on $(hostname), log {log}")
  return [ssh(args, remote)]


def logs_command(args) -> list[list[str]]:
  if args.worker != "all" and not args.worker.isdigit():
    raise LaunchError(f"--worker must be a number or 'all', got {args.worker!r}")
  tail = f"tail -n {int(args.lines)}{' -f' if args.follow else ''} {_home(_log_path(args.log))}"
  return [ssh(args, tail, worker=args.worker)]


def stop_command(args) -> list[list[str]]:
  pid = _home(f"~/{args.log}.pid")
  # A run started with --sudo belongs to root: fall back to sudo kill.
  kill = f"kill -TERM -- -$(cat {pid})"
  return [ssh(args, f"if test -f {pid} && ({kill} 2>/dev/null || sudo {kill}); then "
                    f"echo stopped on $(hostname); else echo nothing running on $(hostname); fi")]


def delete_commands(args) -> list[list[str]]:
  if args.queued:
    return [_gcloud(args, "queued-resources", "delete", args.tpu) + ["--force", "--quiet"]]
  return [_gcloud(args, "tpu-vm", "delete", args.tpu) + ["--quiet"]]


# ------------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m aci_jax.launch", description=__doc__.split("\n\n")[0])
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

  def command(name, help_):
    s = sub.add_parser(name, help=help_)
    s.add_argument("--tpu", required=True, help="TPU (node) name")
    s.add_argument("--zone", required=True, help="e.g. us-central2-b")
    s.add_argument("--project", default="", help="default: gcloud's configured project")
    s.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS)
    return s

  s = command("create", "create a TPU VM (or a queued resource)")
  s.add_argument("--accelerator-type", required=True, help="e.g. v4-8, v5litepod-8, v5p-32")
  s.add_argument("--version", default="",
                 help="TPU VM runtime image (default by type: v4 tpu-ubuntu2204-base, "
                      "v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)")
  s.add_argument("--spot", action="store_true", help="spot capacity (preemptible)")
  s.add_argument("--queued", action="store_true", help="as a queued resource")
  s = command("setup", "copy the code to every worker and install it")
  s.add_argument("--source", default=".", help="git checkout to copy (its HEAD commit)")
  s = command("run", "start `python -m aci_jax.main ARGS` on every worker")
  s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the run (repeatable), e.g. HF_TOKEN=...")
  s.add_argument("--sudo", action="store_true",
                 help="run as root (the sandbox's strong isolation needs it)")
  s.add_argument("--log", default="aci_jax", help="log and pid file name in ~ on each worker")
  s.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then the run's flags")
  s = command("logs", "show a worker's log")
  s.add_argument("--worker", default="0", help="worker number, or 'all'")
  s.add_argument("--follow", action="store_true")
  s.add_argument("--lines", type=int, default=100)
  s.add_argument("--log", default="aci_jax")
  s = command("stop", "stop the run on every worker")
  s.add_argument("--log", default="aci_jax")
  s = command("delete", "delete the TPU VM (or the queued resource)")
  s.add_argument("--queued", action="store_true")
  return p


BUILDERS = {"create": create_commands, "setup": setup_commands, "run": run_command,
            "logs": logs_command, "stop": stop_command, "delete": delete_commands}


def commands(argv: list[str]) -> tuple[list[list[str]], bool]:
  """(the commands `argv` asks for, dry_run); LaunchError for bad input."""
  args = parser().parse_args(argv)
  if not _NAME.match(args.tpu):
    raise LaunchError(f"--tpu {args.tpu!r}: lowercase letters, digits and '-', starting with a "
                      "letter")
  if not _ZONE.match(args.zone):
    raise LaunchError(f"--zone {args.zone!r} does not look like a zone (e.g. us-central2-b)")
  return BUILDERS[args.cmd](args), bool(getattr(args, "dry_run", False))


def main(argv: list[str] | None = None) -> int:
  try:
    cmds, dry_run = commands(sys.argv[1:] if argv is None else argv)
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if dry_run:
    for cmd in cmds:
      print(shlex.join(cmd))
    return 0
  if shutil.which("gcloud") is None:
    print("error: gcloud not found; install the Google Cloud CLI (or use --dry-run to see the "
          "commands)", file=sys.stderr)
    return 2
  for cmd in cmds:
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    rc = subprocess.call(cmd)
    if rc:
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
