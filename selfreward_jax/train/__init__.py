"""Training: losses (token/sequence log-probs, SFT, DPO/IPO/RPO), the jitted sharded train step, the
SFT and DPO trainers, optimizer schedules and train-state checkpoints.

Modules: ``losses``, ``optim``, ``state``, ``step``, ``objectives``, ``checkpoints``, ``metrics``,
``config``, ``loop``, ``sft``, ``dpo``; ``python -m selfreward_jax.train`` is a small CLI.
"""

from selfreward_jax.train.checkpoints import Checkpointer, load_trained_params
from selfreward_jax.train.config import DPOConfig, SFTConfig, TrainConfig
from selfreward_jax.train.dpo import compute_reference_logps, train_dpo
from selfreward_jax.train.loop import NonFiniteLossError
from selfreward_jax.train.losses import (dpo_loss, dpo_loss_per_pair, masked_sequence_logps,
                                         sequence_logps, sft_loss, token_logps)
from selfreward_jax.train.optim import OptimConfig, make_optimizer, make_schedule
from selfreward_jax.train.sft import train_sft
from selfreward_jax.train.state import TrainState, init_train_state, state_shardings
from selfreward_jax.train.step import Objective, TrainStep

__all__ = [
    "Checkpointer", "DPOConfig", "NonFiniteLossError", "Objective", "OptimConfig", "SFTConfig",
    "TrainConfig", "TrainState", "TrainStep", "compute_reference_logps", "dpo_loss",
    "dpo_loss_per_pair", "init_train_state", "load_trained_params", "make_optimizer",
    "make_schedule",
    "masked_sequence_logps", "sequence_logps", "sft_loss", "state_shardings", "token_logps",
    "train_dpo", "train_sft",
]
