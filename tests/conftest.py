"""Test-wide settings. Eight host CPU devices so mesh tests run anywhere; set before JAX loads."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Reference models come from local files only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
  """Tests marked `run_first` are collected first (a stable sort: the rest keep their order).
  Under `pytest -n 2` a multi-minute test collected late runs alone on one worker at the end of
  CI while the other idles; started first, it overlaps the rest. Only single-process tests get
  the mark: the multi-process ones (gloo collectives spin) slow each other down when started
  together on 2 cores."""
  items.sort(key=lambda item: item.get_closest_marker("run_first") is None)
