"""The host rollout loop and the trajectory record."""

from aci_jax.rollout.engine import Request, RolloutConfig, RolloutEngine
from aci_jax.rollout.rows import RolloutResult, RolloutStats
from aci_jax.rollout.trajectory import Cell, Trajectory, read_jsonl, write_jsonl

__all__ = ["Cell", "Request", "RolloutConfig", "RolloutEngine", "RolloutResult", "RolloutStats",
           "Trajectory", "read_jsonl", "write_jsonl"]
