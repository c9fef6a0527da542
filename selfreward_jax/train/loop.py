"""The training loop shared by the SFT and DPO trainers: fresh start or resume, steps, metrics,
checkpoints, the non-finite-loss guard.

Workdir layout (one trainer run per workdir)::

  checkpoints/<step>/   orbax: TrainState + meta (data position, data fingerprint, total steps)
  metrics.jsonl         one record per step (see ``train.metrics``)
  tb/                   TensorBoard scalars
  data_stats.json       kept/skipped example counts (written by the trainer)
  summary.json          written when the run finishes: steps, final metrics, wall time

Rerunning with the same workdir resumes from the newest checkpoint (params, optimizer state, step,
rng and data position), onto the current mesh; a finished run restores its final state without
training. A non-finite loss, gradient norm or updated-param norm stops training with
``NonFiniteLossError`` before anything is saved for that step, so the newest checkpoint is the
last good state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Dict, Optional

import jax
import optax
from jax.sharding import Mesh

from selfreward_jax import distributed
from selfreward_jax.data.batching import Batcher, DataPosition
from selfreward_jax.data.jsonl import write_json
from selfreward_jax.model import llama
from selfreward_jax.train import state as st
from selfreward_jax.train.checkpoints import Checkpointer
from selfreward_jax.train.config import TrainConfig
from selfreward_jax.train.metrics import MetricsLogger, is_finite
from selfreward_jax.train.step import Objective, TrainStep, put_local_batch

log = logging.getLogger(__name__)

OnStep = Callable[[int, Dict[str, float]], None]

# Checked after every step before anything is saved: the loss and gradient of the batch, and the
# norm of the updated params (an exploding update is caught before it reaches a checkpoint).
FINITE_KEYS = ("loss", "grad_norm", "param_norm")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient norm; ``last_checkpoint_step`` is the newest
  (good) checkpoint, or None."""

  def __init__(self, message: str, step: int, last_checkpoint_step: Optional[int]):
    super().__init__(message)
    self.step, self.last_checkpoint_step = step, last_checkpoint_step


@dataclasses.dataclass
class LoopSpec:
  """What a trainer hands the loop.

  name: "sft" / "dpo" (TensorBoard prefix, checkpoint meta).
  model_config: the training model config (float32 params; see ``TrainConfig.model_config``).
  objective, tx, schedule: the step's loss and optimizer.
  make_batcher: ``DataPosition -> Batcher`` (called with the restored position on resume).
  total_steps: updates in the whole run.
  fingerprint: ``batching.fingerprint`` of the training data (a resume on other data is refused).
  extra, extra_shardings: passed to every step (in-step DPO reference params).
  """

  name: str
  model_config: llama.LlamaConfig
  objective: Objective
  tx: optax.GradientTransformation
  schedule: Callable
  make_batcher: Callable[[DataPosition], Batcher]
  total_steps: int
  fingerprint: str
  extra: Any = None
  extra_shardings: Any = None


def _restore_or_init(spec: LoopSpec, ckpt: Checkpointer, shardings: st.TrainState, params,
                     seed: int):
  latest = ckpt.latest_step()
  if latest is None:
    return st.init_train_state(params, spec.tx, shardings, seed), DataPosition(), 0
  abstract = st.abstract_state(spec.model_config, spec.tx, shardings)
  state, meta = ckpt.restore(latest, abstract)
  if meta.get("data_fingerprint") != spec.fingerprint:
    raise ValueError(f"{ckpt.directory}: checkpoint step {latest} was trained on different data "
                     "(fingerprint mismatch); use a fresh workdir for new data")
  if meta.get("total_steps") != spec.total_steps:
    log.warning("%s: resuming a run planned for %s steps with total_steps=%d (the lr schedule "
                "changes)", spec.name, meta.get("total_steps"), spec.total_steps)
  log.info("%s: resumed from step %d (%s)", spec.name, latest, ckpt.directory)
  return state, DataPosition.from_dict(meta["data_position"]), latest


def _host_metrics(dev_metrics, t_prev: float):
  """Fetches a step's metrics (this waits for the step) and adds wall-clock throughput."""
  metrics = {k: float(v) for k, v in jax.device_get(dev_metrics).items()}
  now = time.time()
  metrics["step_time_s"] = now - t_prev
  metrics["tokens_per_s"] = metrics.get("n_tokens", 0.0) / max(now - t_prev, 1e-9)
  return metrics, now


def _check_finite(name: str, step: int, metrics: Dict[str, float], ckpt: Checkpointer) -> None:
  """Raises ``NonFiniteLossError`` (after pending saves finish) if a ``FINITE_KEYS`` value is not
  finite."""
  if is_finite(metrics, FINITE_KEYS):
    return
  ckpt.wait()
  last = ckpt.latest_step()
  values = ", ".join(f"{k}={metrics[k]}" for k in FINITE_KEYS)
  raise NonFiniteLossError(
      f"{name}: non-finite value at step {step} ({values}); training stopped and nothing was "
      f"saved for this step. Last good checkpoint: {'none' if last is None else f'step {last}'} "
      f"in {ckpt.directory}", step, last)


def run_training(spec: LoopSpec, params, train_config: TrainConfig, workdir: str, mesh: Mesh,
                 on_step: Optional[OnStep] = None) -> st.TrainState:
  """Trains until ``spec.total_steps`` (resuming from ``workdir`` if it holds a checkpoint).

  ``params``: initial params (ignored on resume); they are placed into the train state without
  a copy when already float32 on the right shardings, and the step donates them: do not use the
  caller's references afterwards. ``on_step(step, metrics)`` is called after each logged step.
  Returns the final ``TrainState``.
  """
  tc = train_config
  shardings = st.state_shardings(spec.model_config, spec.tx, mesh)
  step_fn = TrainStep(spec.objective, spec.tx, spec.schedule, shardings, mesh,
                      spec.extra_shardings, compiler_options=tc.compiler_options)
  t_start = time.time()
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=tc.save_every,
                      max_to_keep=tc.max_to_keep, async_save=tc.async_checkpointing)
  logger = None
  try:
    state, position, start = _restore_or_init(spec, ckpt, shardings, params, tc.seed)
    del params
    batcher = spec.make_batcher(position)
    rows = batcher.batch_size // batcher.microbatches
    batcher.set_local_rows(distributed.process_rows(mesh, rows))  # multi-host: this host's rows
    logger = MetricsLogger(workdir, total_steps=spec.total_steps, start_step=start,
                           tensorboard=tc.tensorboard, progress=tc.progress,
                           prefix=f"{spec.name}/", enabled=distributed.is_writer())
    metrics = {}
    next_batch = lambda: put_local_batch(batcher.next_batch(), mesh, rows)
    batch = next_batch() if start < spec.total_steps else None
    t_prev = time.time()
    for step in range(start, spec.total_steps):
      state, dev_metrics = step_fn(state, batch, spec.extra)
      position = batcher.position  # of the batch after the one just used
      if step + 1 < spec.total_steps:
        batch = next_batch()  # overlaps with the device computation
      metrics, t_prev = _host_metrics(dev_metrics, t_prev)
      _check_finite(spec.name, step + 1, metrics, ckpt)
      logger.log(step + 1, metrics)
      logger.advance()
      meta = {"data_position": position.to_dict(), "data_fingerprint": spec.fingerprint,
              "total_steps": spec.total_steps, "kind": spec.name}
      ckpt.maybe_save(step + 1, state, meta, force=step + 1 == spec.total_steps)
      if on_step is not None:
        on_step(step + 1, metrics)
    ckpt.wait()
    write_json(os.path.join(workdir, "summary.json"), {  # process 0 writes, all wait
        "kind": spec.name, "total_steps": spec.total_steps, "resumed_from": start,
        "final_metrics": metrics, "wall_time_s": time.time() - t_start,
        "checkpoints": ckpt.all_steps()})
    return state
  finally:
    ckpt.close()
    if logger is not None:
      logger.close()


def mesh_or_default(mesh: Optional[Mesh]) -> Mesh:
  """``mesh``, or one over all devices with every device on the fsdp axis."""
  if mesh is not None:
    return mesh
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  return shd.make_mesh(shd.MeshConfig())


def export_final(export_hf, workdir: str, config: llama.LlamaConfig, params,
                 tokenizer=None) -> Optional[str]:
  """Writes the final params as an HF checkpoint to ``<workdir>/hf``; returns its path.

  ``export_hf``: None/False: no export; True: ``checkpoint.hf.save_hf_checkpoint`` in
  ``config.param_dtype``, with the tokenizer's model file; a callable ``(path, config, params)``:
  called instead. An existing non-empty ``<workdir>/hf`` is kept (exports are atomic, so it is a
  finished export of this run's final state).
  """
  if not export_hf:
    return None
  path = os.path.join(workdir, "hf")
  if os.path.isdir(path) and os.listdir(path):
    log.info("HF export already in %s", path)
    return path
  if export_hf is True:
    from selfreward_jax.checkpoint.hf import save_hf_checkpoint  # pylint: disable=g-import-not-at-top
    save_hf_checkpoint(path, config, params, dtype=config.param_dtype,
                       tokenizer_path=getattr(tokenizer, "model_path", None))
  else:
    export_hf(path, config, params)
  log.info("HF export written to %s", path)
  return path


def check_setup(train_config: TrainConfig, config: llama.LlamaConfig, tokenizer, mesh: Mesh
                ) -> None:
  """Fails fast (before any data or model work) on a batch that cannot be laid out on the mesh
  or a tokenizer whose ids do not fit the model's vocabulary."""
  tc = train_config
  rows = tc.batch_size // tc.microbatches
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % shards:
    raise ValueError(f"batch_size / microbatches = {rows} rows per microbatch is not divisible by "
                     f"the mesh's data*fsdp = {shards}")
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                     f"{config.vocab_size}")
