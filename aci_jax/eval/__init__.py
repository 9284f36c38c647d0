"""Evaluation harness: greedy / mean@k accuracy, tool-use statistics and selection accuracy
over `RolloutEngine` runs (docs/evaluation.md)."""

from aci_jax.eval.harness import (
    GROUP_KEYS, chat_prompt, evaluate, evaluate_benchmarks, grade_trajectories, response_metrics,
    selection_metrics, summarize, write_json)

__all__ = ["GROUP_KEYS", "chat_prompt", "evaluate", "evaluate_benchmarks", "grade_trajectories",
           "response_metrics", "selection_metrics", "summarize", "write_json"]
