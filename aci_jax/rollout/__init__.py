"""The host rollout loop and the trajectory record."""

from aci_jax.rollout.engine import FENCE, Request, RolloutConfig, RolloutEngine, RolloutStats
from aci_jax.rollout.trajectory import Cell, Trajectory, read_jsonl, write_jsonl

__all__ = ["Cell", "FENCE", "Request", "RolloutConfig", "RolloutEngine", "RolloutStats",
           "Trajectory", "read_jsonl", "write_jsonl"]
