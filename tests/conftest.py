"""Test-wide settings. Eight host CPU devices so mesh tests run anywhere; set before JAX loads."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Reference models come from local files only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One persistent XLA compilation cache for the whole test run: the xdist workers and every
# subprocess a test starts (EM runs, multi-host launches, the CLI) inherit it from this, the
# controlling process, which imports this file before it starts them. Tests build the same tiny
# models and jitted steps over and over (a new closure misses JAX's in-memory cache; the
# persistent one is keyed by the compiled program, so it hits). A fresh directory per run, removed
# at the end: nothing is reused across runs. A cache the user set is left alone.
_CACHE_OWNER = "ACI_JAX_TEST_XLA_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and not os.environ.get("ACI_JAX_TEST_NO_XLA_CACHE"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="aci_jax_test_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ[_CACHE_OWNER] = str(os.getpid())


def pytest_unconfigure(config):
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Tests marked `run_first` are collected first (a stable sort: the rest keep their order).
  Under `pytest -n 2` a multi-minute test collected late runs alone on one worker at the end of
  CI while the other idles; started first, it overlaps the rest. Only single-process tests get
  the mark: the multi-process ones (gloo collectives spin) slow each other down when started
  together on 2 cores."""
  items.sort(key=lambda item: item.get_closest_marker("run_first") is None)
