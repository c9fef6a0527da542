"""Frozen configs of the SFT and DPO trainers, composed from small parts (no god-config):

* ``TrainConfig``: what every trainer needs (batching, length of the run, numerics overrides,
  checkpointing, logging).
* ``OptimConfig`` (``train.optim``): AdamW and the learning-rate schedule.
* ``SFTConfig`` / ``DPOConfig``: a ``TrainConfig`` + an ``OptimConfig`` + the objective's knobs,
  with the paper's hyperparameters as defaults (PAPER.md): batch 16, dropout 0.1, SFT lr 5.5e-6
  cosine to 1.1e-6, DPO lr 1e-6 to 1e-7 with beta 0.1 and a checkpoint every 200 steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from selfreward_jax.data import batching
from selfreward_jax.model import llama
from selfreward_jax.train.losses import LOSS_TYPES
from selfreward_jax.train.optim import OptimConfig

REFERENCE_MODES = ("precomputed", "in_step")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Shared trainer settings.

  Attributes:
    batch_size: sequences (SFT rows, DPO pairs) per optimizer update, all microbatches together.
    microbatches: gradient-accumulation steps inside one update (``batch_size`` divisible by it,
      and ``batch_size / microbatches`` divisible by the mesh's data*fsdp).
    max_len: longest example kept, in tokens (longer ones are dropped, see ``data.batching``).
    buckets: padded lengths (default ``batching.default_buckets(max_len)``: 64, 128, ..., max_len).
    num_epochs: passes over the data (fractional allowed); ignored when ``num_steps`` is set.
    num_steps: run exactly this many updates.
    seed: data order and dropout randomness.
    shuffle: shuffle each epoch (False: file order).
    dropout_rate: overrides the model's ``dropout_rate`` (paper: 0.1); None keeps the model's.
    remat, compute_dtype: override the model's (``"full"``/``"dots"``/...; ``"bfloat16"``).
      Master weights and the optimizer state are always float32.
    save_every, max_to_keep, async_checkpointing: checkpoint policy (the final step is always
      saved).
    tensorboard, progress: TensorBoard scalars, tqdm bar.
    system_prompt: default Llama 2 system prompt for records without one (None: none).
    compiler_options: XLA options for the jitted step and reference pass (e.g.
      ``{"xla_backend_optimization_level": 0}``: ~4x faster CPU compiles, for tests).
  """

  batch_size: int = 16
  microbatches: int = 1
  max_len: int = 1024
  buckets: Optional[Tuple[int, ...]] = None
  num_epochs: float = 1.0
  num_steps: Optional[int] = None
  seed: int = 0
  shuffle: bool = True
  dropout_rate: Optional[float] = 0.1
  remat: Optional[str] = None
  compute_dtype: Optional[str] = None
  save_every: int = 200
  max_to_keep: Optional[int] = 3
  async_checkpointing: bool = True
  tensorboard: bool = True
  progress: bool = True
  system_prompt: Optional[str] = None
  compiler_options: Optional[Mapping[str, Any]] = None

  def __post_init__(self):
    if self.batch_size <= 0 or self.microbatches <= 0 or self.batch_size % self.microbatches:
      raise ValueError(f"TrainConfig: batch_size={self.batch_size} must be a positive multiple of "
                       f"microbatches={self.microbatches}")
    if self.num_steps is not None and self.num_steps <= 0:
      raise ValueError(f"TrainConfig.num_steps={self.num_steps} must be positive")
    if self.num_steps is None and self.num_epochs <= 0:
      raise ValueError(f"TrainConfig.num_epochs={self.num_epochs} must be positive")
    if self.buckets is not None and max(self.buckets) < self.max_len:
      raise ValueError(f"TrainConfig.buckets={self.buckets}: the largest must be >= max_len="
                       f"{self.max_len}")

  def bucket_lengths(self) -> Tuple[int, ...]:
    return tuple(self.buckets) if self.buckets else batching.default_buckets(self.max_len)

  def model_config(self, config: llama.LlamaConfig) -> llama.LlamaConfig:
    """``config`` with this run's numerics: float32 params, dropout/remat/compute overrides."""
    kw = {"param_dtype": "float32"}
    for field in ("dropout_rate", "remat", "compute_dtype"):
      if getattr(self, field) is not None:
        kw[field] = getattr(self, field)
    return config.replace(**kw)

  def replace(self, **kw) -> "TrainConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised fine-tuning (IFT + EFT seed data -> M1).

  pack: pack several examples per row (segment ids, per-segment positions) up to the largest
    bucket; fewer padding tokens, same loss (attention never crosses examples).
  """

  train: TrainConfig = TrainConfig()
  optim: OptimConfig = OptimConfig.sft()
  pack: bool = False

  def replace(self, **kw) -> "SFTConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  """DPO from M_t on its own preference pairs (-> M_{t+1}).

  beta, label_smoothing, loss_type, nll_alpha: see ``losses.dpo_loss`` (nll_alpha > 0 is
    Iterative RPO's extra NLL on the chosen response).
  reference: "precomputed" (default): the reference log-probs of every pair are computed once
    before training from the initial params (cached in ``reference_logps_path``, default
    ``<workdir>/reference_logps.npz``), so training holds a single copy of the weights;
    "in_step": a frozen copy of the initial params is passed to every step instead.
  reference_batch_size: pairs per forward when precomputing (default ``train.batch_size``).
  """

  train: TrainConfig = TrainConfig(save_every=200)
  optim: OptimConfig = OptimConfig.dpo()
  beta: float = 0.1
  label_smoothing: float = 0.0
  loss_type: str = "sigmoid"
  nll_alpha: float = 0.0
  reference: str = "precomputed"
  reference_logps_path: Optional[str] = None
  reference_batch_size: Optional[int] = None

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"DPOConfig.loss_type={self.loss_type!r}; allowed: {LOSS_TYPES}")
    if self.reference not in REFERENCE_MODES:
      raise ValueError(f"DPOConfig.reference={self.reference!r}; allowed: {REFERENCE_MODES}")
    if self.beta <= 0:
      raise ValueError(f"DPOConfig.beta={self.beta} must be positive")

  def replace(self, **kw) -> "DPOConfig":
    return dataclasses.replace(self, **kw)
