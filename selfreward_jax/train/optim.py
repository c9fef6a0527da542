"""Optimizer and learning-rate schedules: AdamW with global-norm clipping, warmup then decay.

The paper's schedules (PAPER.md, "Hyperparameters"):

* SFT: 5.5e-6, cosine decay to 1.1e-6 (``OptimConfig.sft()``).
* DPO: 1e-6, "decaying to 1e-7"; the paper does not say how. We decay linearly by default
  (``OptimConfig.dpo()``, the common choice in DPO recipes); ``schedule="cosine"`` is available.

Paper-silent choices, stated: no warmup by default (set ``warmup_steps``), AdamW betas
(0.9, 0.999) and eps 1e-8 (the PyTorch/HF defaults used by fine-tuning recipes), weight decay 0
(when > 0 it skips the RMSNorm scales), gradient clipping at global norm 1.0.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW and its learning-rate schedule.

  Attributes:
    learning_rate: peak learning rate (reached at the end of warmup).
    end_learning_rate: learning rate at ``total_steps`` (ignored by "constant").
    schedule: decay after warmup: "cosine", "linear" or "constant".
    warmup_steps: linear warmup from ``learning_rate / warmup_steps`` (step 0) to the peak.
    b1, b2, eps: Adam moments.
    weight_decay: decoupled weight decay (not applied to norm scales).
    grad_clip_norm: clip gradients to this global L2 norm (None or 0: no clipping).
  """

  learning_rate: float = 5.5e-6
  end_learning_rate: float = 1.1e-6
  schedule: str = "cosine"
  warmup_steps: int = 0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimConfig.schedule={self.schedule!r}; allowed: {SCHEDULES}")
    if self.learning_rate <= 0 or self.end_learning_rate < 0:
      raise ValueError("OptimConfig: learning rates must be positive")
    if self.warmup_steps < 0:
      raise ValueError(f"OptimConfig.warmup_steps={self.warmup_steps} must be >= 0")

  @classmethod
  def sft(cls, **kw) -> "OptimConfig":
    """The paper's SFT schedule: cosine 5.5e-6 -> 1.1e-6."""
    return cls(**{**dict(learning_rate=5.5e-6, end_learning_rate=1.1e-6, schedule="cosine"), **kw})

  @classmethod
  def dpo(cls, **kw) -> "OptimConfig":
    """The paper's DPO schedule: 1e-6 decaying (linearly, our choice) to 1e-7."""
    return cls(**{**dict(learning_rate=1e-6, end_learning_rate=1e-7, schedule="linear"), **kw})

  def replace(self, **kw) -> "OptimConfig":
    return dataclasses.replace(self, **kw)


def make_schedule(config: OptimConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """lr(step) for step = 0 .. total_steps - 1 (the step whose update uses it).

  Warmup: ``lr * (step + 1) / warmup_steps`` for step < warmup_steps. Decay: with progress
  ``p = (step - warmup) / (total_steps - warmup)`` clipped to [0, 1], cosine gives
  ``end + (lr - end) (1 + cos(pi p)) / 2`` and linear ``lr + (end - lr) p``; so the first decay step
  uses the peak and ``end_learning_rate`` is reached at ``total_steps``.
  """
  c = config
  warm = int(c.warmup_steps)
  decay = max(1, int(total_steps) - warm)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm_lr = c.learning_rate * (step + 1.0) / max(warm, 1)
    p = jnp.clip((step - warm) / decay, 0.0, 1.0)
    if c.schedule == "cosine":
      lr = c.end_learning_rate + (c.learning_rate - c.end_learning_rate) * 0.5 * (1 + jnp.cos(jnp.pi * p))
    elif c.schedule == "linear":
      lr = c.learning_rate + (c.end_learning_rate - c.learning_rate) * p
    else:
      lr = jnp.full_like(p, c.learning_rate)
    return jnp.where(step < warm, warm_lr, lr)

  return schedule


def _decay_mask(params):
  """True for parameters that get weight decay: everything but the norm scales."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "norm" not in jax.tree_util.keystr(path), params)


def make_optimizer(config: OptimConfig, total_steps: int
                   ) -> Tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """``(optimizer, schedule)``: global-norm clipping then AdamW driven by ``make_schedule``.

  The optimizer keeps its own step count (inside the AdamW state), which matches the train
  state's step as long as every update goes through it.
  """
  schedule = make_schedule(config, total_steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay,
                           mask=_decay_mask if config.weight_decay else None))
  return optax.chain(*parts), schedule
