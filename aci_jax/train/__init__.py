"""The training core shared by SFT warm-up, the M-step and the baselines: registered losses,
chunked log-probabilities, a sharded jitted train step with gradient accumulation, AdamW with
warm-up + cosine, and orbax checkpoints with exact resume. See docs/training.md."""

from aci_jax.train.losses import (LOSSES, LossConfig, LossTerm, get_loss, register_loss)
from aci_jax.train.logprobs import chunked_logprobs, token_logprobs
from aci_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from aci_jax.train.step import (StepConfig, TrainState, abstract_train_state, init_train_state,
                                make_logprobs_fn, make_train_step, shard_batch, state_shardings)

__all__ = [
    "LOSSES", "LossConfig", "LossTerm", "get_loss", "register_loss", "chunked_logprobs",
    "token_logprobs", "OptimConfig", "make_optimizer", "make_schedule", "StepConfig",
    "TrainState", "abstract_train_state", "init_train_state", "make_logprobs_fn",
    "make_train_step", "shard_batch",
    "state_shardings",
]
