"""Test-wide settings. Eight host CPU devices so mesh tests run anywhere; set before JAX loads."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Reference models come from local files only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
  """Tests marked `slow` run first (stable sort, so the order is otherwise unchanged): under
  `pytest -n 2` a multi-minute test collected late ran alone on one worker at the end of CI."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
