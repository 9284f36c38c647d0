"""Shared timing for the benchmark scripts."""

import statistics
import time


def median_time(fn, repeats: int) -> float:
  """Median wall seconds of `fn()` over `repeats` calls, after one warm-up call (compilation)."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)
