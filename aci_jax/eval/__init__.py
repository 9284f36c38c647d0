"""Evaluation harness: greedy / mean@k accuracy, tool-use statistics and selection accuracy
over `RolloutEngine` runs (docs/evaluation.md)."""

from aci_jax.eval.harness import (
    CODE_PREFIX, GROUP_KEYS, chat_prompt, engine_with_sampling, evaluate, evaluate_benchmarks,
    grade_trajectories, response_metrics, selection_metrics, summarize, write_json)

__all__ = ["CODE_PREFIX", "GROUP_KEYS", "chat_prompt", "engine_with_sampling", "evaluate",
           "evaluate_benchmarks", "grade_trajectories", "response_metrics", "selection_metrics",
           "summarize", "write_json"]
