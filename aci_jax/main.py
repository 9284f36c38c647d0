"""The entry point of every run.

    python -m aci_jax.main --config configs/X.py [--config.key=value ...] [--workdir DIR]

`config.mode` picks what runs. Modes live in a registry: a module in `MODE_MODULES` registers its
modes with `@register_mode("name")` when imported, so a new mode (the EM loop's `em`, `eval`)
arrives by adding its module, without touching this file:

    from aci_jax.main import register_mode

    @register_mode("em")
    def em(config, workdir): ...

Bad flags, config keys or values, and missing files fail with one line on stderr and exit
status 2; anything that goes wrong *during* a run keeps its traceback. The workdir (default: a
fresh folder under runs/; or gs://bucket/path, docs/tpu.md) receives config.json, metrics.jsonl,
tb/ (TensorBoard), checkpoints/ and export/. Re-running with the same --workdir resumes from its
latest checkpoint.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import logging
import os
import sys
from typing import Any, Callable

from absl import app, flags
from ml_collections import config_flags

from aci_jax import fileio

log = logging.getLogger(__name__)

_FLAGS: dict = {}


def _define_flags():
  """Defined on first use, not at import: `python -m aci_jax.main` runs this file as __main__
  and then imports it as aci_jax.main (where the mode registry lives); flags must exist once."""
  if not _FLAGS:
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Python config file whose get_config() returns a ConfigDict.",
        lock_config=True)
    _FLAGS["workdir"] = flags.DEFINE_string(
        "workdir", None, "Run directory (checkpoints, metrics, exports). Default: a new folder "
        "under runs/. Re-use one to resume.")

ModeFn = Callable[[Any, str], None]  # (config: ml_collections.ConfigDict, workdir) -> None
MODES: dict[str, ModeFn] = {}
# Optional per-mode config checks, run before anything is created or logged, so that a bad
# value is reported as the only line of output.
VALIDATORS: dict[str, Callable] = {}
# Modules that register modes when imported; those not present yet are skipped.
MODE_MODULES = ("aci_jax.train.modes", "aci_jax.em.modes", "aci_jax.eval.modes")


class UsageError(Exception):
  """Reported as one line on stderr, exit status 2."""


def register_mode(name: str, validate: Callable | None = None):
  """Decorator registering `fn(config, workdir)` as `config.mode = name`; `validate(config)`,
  if given, raises ConfigError for bad values before the run starts."""

  def wrap(fn: ModeFn) -> ModeFn:
    if name in MODES and MODES[name] is not fn:
      raise ValueError(f"mode {name!r} is already registered by {MODES[name].__module__}")
    MODES[name] = fn
    if validate is not None:
      VALIDATORS[name] = validate
    return fn

  return wrap


def load_modes() -> dict[str, ModeFn]:
  for module in MODE_MODULES:
    try:
      spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # its parent package does not exist yet
      spec = None
    if spec is not None:
      importlib.import_module(module)
  return MODES


# ---------------------------------------------------------------------- multi-host start


def _gce_tpu_workers(timeout: float = 2.0) -> int:
  """Number of workers of the Cloud TPU VM slice this host belongs to; 0 when not on one.

  A TPU VM created with `gcloud compute tpus tpu-vm create` lists its slice's workers in the
  GCE metadata (`worker-network-endpoints`), not in the environment (TPU_WORKER_HOSTNAMES is a
  GKE variable); this is the list `jax.distributed.initialize()` itself reads there. Asked only
  when the host has TPU chips, so other machines never wait on the metadata server.
  """
  try:
    from jax._src import hardware_utils  # reads /sys only; imports no backend
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except (ImportError, AttributeError, OSError, ValueError):
    return 0
  if not chips or os.environ.get("TPU_SKIP_MDS_QUERY"):
    return 0
  import urllib.request
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  req = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return len([w for w in r.read().decode().split(",") if w.strip()])
  except OSError:
    return 0


def _env_says_multihost() -> bool:
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice on GKE
    return True
  if _gce_tpu_workers() > 1:  # a multi-host Cloud TPU VM slice (gcloud ... --worker=all)
    return True
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(env.get(key, "1") or 1) > 1:
      return True
  return False


def maybe_initialize_distributed(dist) -> bool:
  """Calls `jax.distributed.initialize` for multi-host runs, before any JAX computation.

  dist.coordinator set: explicit (coordinator address, num_processes, process_id), e.g. for
  several local CPU processes. dist.multihost: "auto" (initialise when the environment shows a
  multi-host launch: a multi-host TPU slice (Cloud TPU VM metadata or GKE), SLURM, Open MPI,
  JAX_COORDINATOR_ADDRESS), "on"
  (always; JAX detects the cluster), "off".
  """
  import jax

  if dist is None:
    return False
  mode = dist.get("multihost", "auto")
  if mode not in ("auto", "on", "off"):
    raise UsageError(f"config.dist.multihost must be auto|on|off, got {mode!r}")
  explicit = bool(dist.get("coordinator", ""))
  if not explicit and (mode == "off" or (mode == "auto" and not _env_says_multihost())):
    return False
  if dist.get("cpu_collectives", "") and (jax.config.jax_platforms or "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
  if explicit:
    jax.distributed.initialize(coordinator_address=dist.coordinator,
                               num_processes=int(dist.num_processes),
                               process_id=int(dist.process_id))
  else:
    jax.distributed.initialize()
  log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return True


# --------------------------------------------------------------------------------- main


def default_workdir(config_path: str | None) -> str:
  name = os.path.splitext(os.path.basename(config_path or "run"))[0]
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  base = os.path.join("runs", f"{name}-{stamp}")
  path, k = base, 1
  while os.path.exists(path):
    k += 1
    path = f"{base}-{k}"
  return path


def run(config, workdir: str | None, config_path: str | None = None) -> str:
  """Runs `config.mode` in `workdir`; returns the workdir. (Callable from Python, too.)"""
  import jax

  from aci_jax.train.runner import ConfigError

  modes = load_modes()
  mode = config.get("mode", None)
  if mode not in modes:
    raise UsageError(f"config.mode={mode!r} is not a registered mode; registered: "
                     f"{', '.join(sorted(modes))}")
  if mode in VALIDATORS:
    try:
      VALIDATORS[mode](config)
    except ConfigError as e:
      raise UsageError(str(e)) from None
  maybe_initialize_distributed(config.get("dist", None))
  if workdir is None:
    if jax.process_count() > 1:
      raise UsageError("--workdir is required on multi-host runs (all hosts must share it)")
    workdir = default_workdir(config_path)
  try:
    fileio.check(workdir)  # gs:// without gcsfs: one line now, not a traceback mid-run
    if fileio.is_remote(workdir):  # an unreachable or forbidden bucket, likewise
      quiet = logging.getLogger("gcsfs")  # it logs a traceback per retry before raising
      level = quiet.level
      quiet.setLevel(logging.CRITICAL)
      try:
        fileio.exists(workdir)
      finally:
        quiet.setLevel(level)
  except fileio.StorageError as e:
    raise UsageError(f"--workdir {e}") from None
  except Exception as e:  # noqa: BLE001 - gcsfs/aiohttp raise many types; the user needs one line
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UsageError(f"--workdir {workdir}: {type(e).__name__}: {msg}") from None
  fileio.makedirs(workdir)
  if jax.process_index() == 0:
    with fileio.atomic_open(fileio.join(workdir, "config.json")) as f:
      json.dump(config.to_dict(), f, indent=2, default=str)
  log.info("mode %s, workdir %s, %d devices over %d processes", mode, workdir,
               jax.device_count(), jax.process_count())
  try:
    modes[mode](config, workdir)
  except ConfigError as e:
    raise UsageError(str(e)) from None
  return workdir


def _one_line(e: BaseException) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  errno = [ln for ln in lines if "Errno" in ln]  # config_flags buries the OS error in line 4
  text = (errno or lines or [type(e).__name__])[0]
  if not errno and any(ln.startswith("Traceback") for ln in lines):
    text = f"{text} {lines[-1]}"  # config_flags embeds get_config's traceback: keep its cause
  while len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":  # KeyError repr quotes
    text = text[1:-1]
  return text


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - every flag/config error becomes one line
    if isinstance(e, (KeyError, AttributeError)):
      key = _one_line(e)
      bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
             and key in a.split("=")[0].split(".")[1:]]
      _fail(f"unknown config key {bad[0] if bad else key!r} (not in the config file)")
    _fail(_one_line(e))


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _quiet_libraries():
  """Orbax and JAX log every checkpoint phase at INFO through absl; keep the console to our
  own INFO lines unless the user asked for --verbosity."""
  from absl import logging as absl_logging
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("aci_jax").setLevel(logging.INFO)


def main(argv):
  _quiet_libraries()
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; options are --config, --config.KEY=VALUE, "
          f"--workdir")
  config = _FLAGS["config"].value
  if config is None:
    _fail("--config is required (a configs/*.py file)")
  try:
    config.get("mode", None)  # config_flags reports a file that failed to load only on use
  except Exception as e:  # noqa: BLE001
    _fail(f"cannot load --config: {_one_line(e)}")
  try:
    run(config, _FLAGS["workdir"].value, flags.FLAGS["config"].config_filename)
  except UsageError as e:
    _fail(str(e))


def entry():
  _define_flags()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  # Run the copy imported as aci_jax.main, so modes registering into aci_jax.main.MODES and
  # this entry point share one registry.
  importlib.import_module("aci_jax.main").entry()
