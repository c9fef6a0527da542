"""One jitted, sharded train step shared by SFT and DPO: microbatch gradient accumulation inside the
step (``lax.scan``), so one call is one optimizer update.

An ``Objective`` says what is being minimised; the step knows nothing about SFT or DPO:

* ``loss_fn(params, micro, rng, extra) -> (loss_sum, aux)``: the *sum* of per-item losses over one
  microbatch (items are target tokens for SFT, pairs for DPO) and a dict of float32 scalar sums.
  ``micro`` is the batch dict with its leading microbatch axis removed; ``rng`` is this
  microbatch's dropout key; ``extra`` is whatever the trainer passed to the step (the reference
  params for in-step DPO, else None).
* ``denominator_fn(batch) -> scalar``: the number of items in the whole batch (all microbatches).

The step minimises ``sum over microbatches of loss_sum / denominator`` -- exactly the full-batch
mean, whatever the split into microbatches (microbatches with more target tokens weigh more).
Reported metrics: ``loss``, ``grad_norm`` (before clipping), ``lr``, ``param_norm``, and each aux
value divided by the denominator, except keys starting with ``n_`` (raw counts, e.g. ``n_tokens``).

Batch layout: a dict of arrays ``[M, b, ...]`` (M microbatches of b rows); ``b`` is sharded over the
(data, fsdp) mesh axes, so it must be divisible by ``data * fsdp``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from selfreward_jax import sharding as shd
from selfreward_jax.train.state import TrainState

Batch = Dict[str, Any]


class Objective(NamedTuple):
  """What a train step minimises (see the module docstring)."""

  loss_fn: Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]
  denominator_fn: Callable[[Batch], jax.Array]


def batch_shardings(batch: Batch, mesh: Mesh) -> Dict[str, NamedSharding]:
  """``[M, b, ...]`` arrays: M replicated, b over (data, fsdp), the rest replicated."""
  return {k: NamedSharding(mesh, P(None, shd.BATCH_AXES, *([None] * (np.ndim(v) - 2))))
          for k, v in batch.items()}


def check_batch(batch: Batch, mesh: Mesh) -> None:
  """Raises a clear error if a batch (arrays, or anything with a ``.shape``) cannot be laid out on
  ``mesh``."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  for k, v in batch.items():
    shape = tuple(getattr(v, "shape", np.shape(v)))
    if len(shape) < 2:
      raise ValueError(f"batch[{k!r}] has shape {shape}; expected [microbatches, rows, ...]")
    if shape[1] % n:
      raise ValueError(f"batch[{k!r}]: {shape[1]} rows per microbatch are not divisible by "
                       f"data*fsdp = {n}; choose batch_size / microbatches as a multiple of it")


def put_batch(batch: Batch, mesh: Mesh) -> Batch:
  """Host numpy batch -> sharded device arrays. Every process must hold the same global batch
  (each one copies only its addressable shards, so this also works on multi-host meshes)."""
  check_batch(batch, mesh)
  out = {}
  for k, sh in batch_shardings(batch, mesh).items():
    v = np.asarray(batch[k])
    out[k] = jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
  return out


def put_local_batch(batch: Batch, mesh: Mesh, rows_per_micro: int) -> Batch:
  """This process's rows of a batch -> global sharded device arrays.

  ``batch``: arrays ``[M, r, ...]`` holding rows ``distributed.process_rows(mesh,
  rows_per_micro)`` of each microbatch (all ``rows_per_micro`` rows in a single-process run);
  the global ``[M, rows_per_micro, ...]`` arrays are assembled with
  ``jax.make_array_from_process_local_data``, so no process ever holds another's rows.
  """
  out = {}
  global_rows = {k: (np.shape(v)[0], rows_per_micro) + np.shape(v)[2:] for k, v in batch.items()}
  check_batch({k: jax.ShapeDtypeStruct(shape, np.int8) for k, shape in global_rows.items()}, mesh)
  for k, sh in batch_shardings(batch, mesh).items():
    out[k] = jax.make_array_from_process_local_data(sh, np.asarray(batch[k]), global_rows[k])
  return out


def _accumulate(objective: Objective, params, batch: Batch, rng, extra, denom, param_sh):
  """Sum over microbatches of grad(loss_sum / denom); returns (loss, aux sums, grads)."""
  micro0 = jax.tree.map(lambda x: x[0], batch)
  _, aux_shape = jax.eval_shape(objective.loss_fn, params, micro0, rng, extra)
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  zeros = jax.lax.with_sharding_constraint(zeros, param_sh)
  aux0 = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), aux_shape)

  def scaled(p, micro, r):
    loss_sum, aux = objective.loss_fn(p, micro, r, extra)
    return loss_sum / denom, aux

  def body(carry, xs):
    g_acc, loss_acc, aux_acc = carry
    i, micro = xs
    (loss, aux), g = jax.value_and_grad(scaled, has_aux=True)(params, micro,
                                                               jax.random.fold_in(rng, i))
    g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
    g_acc = jax.lax.with_sharding_constraint(g_acc, param_sh)
    aux_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), aux_acc, aux)
    return (g_acc, loss_acc + loss, aux_acc), None

  m = jax.tree.leaves(batch)[0].shape[0]
  (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), aux0),
                                       (jnp.arange(m), batch))
  return loss, aux, grads


def train_step_fn(objective: Objective, tx: optax.GradientTransformation, schedule,
                  param_sh) -> Callable:
  """The un-jitted step ``(state, batch, extra) -> (new_state, metrics)``."""

  def step(state: TrainState, batch: Batch, extra):
    denom = jnp.maximum(objective.denominator_fn(batch).astype(jnp.float32), 1.0)
    rng = jax.random.fold_in(state.rng, state.step)
    loss, aux, grads = _accumulate(objective, state.params, batch, rng, extra, denom, param_sh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
               "param_norm": optax.global_norm(params)}
    for k, v in aux.items():
      metrics[k] = v if k.startswith("n_") else v / denom
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
    return new_state, metrics

  return step


class TrainStep:
  """The jitted step on ``mesh``: explicit in/out shardings, the train state donated.

  ``step(state, batch, extra=None) -> (state, metrics)``; ``batch`` is a host (numpy) or device
  batch dict (see module docstring); ``extra`` a pytree laid out as ``extra_shardings`` (or None).
  One compilation per distinct batch shape (pad to a few bucket lengths). The old ``state`` is
  invalid after the call. ``compiler_options``: XLA options for ``jax.jit`` (e.g.
  ``{"xla_backend_optimization_level": 0}`` compiles ~4x faster on CPU, for tests).
  """

  def __init__(self, objective: Objective, tx: optax.GradientTransformation, schedule,
               shardings: TrainState, mesh: Mesh, extra_shardings: Any = None,
               compiler_options: Optional[Dict[str, Any]] = None):
    self.mesh = mesh
    self.compiler_options = dict(compiler_options) if compiler_options else None
    self.shardings = shardings
    self.extra_shardings = extra_shardings
    self._fn = train_step_fn(objective, tx, schedule, shardings.params)
    self._jitted: Dict[Any, Callable] = {}

  def _compiled_for(self, batch: Batch) -> Callable:
    key = tuple(sorted((k, np.ndim(v)) for k, v in batch.items()))
    if key not in self._jitted:
      in_sh = (self.shardings, batch_shardings(batch, self.mesh), self.extra_shardings)
      out_sh = (self.shardings, shd.replicated(self.mesh))
      self._jitted[key] = jax.jit(self._fn, in_shardings=in_sh, out_shardings=out_sh,
                                  donate_argnums=(0,), compiler_options=self.compiler_options)
    return self._jitted[key]

  def __call__(self, state: TrainState, batch: Batch, extra: Any = None):
    if any(isinstance(v, np.ndarray) for v in batch.values()):
      batch = put_batch(batch, self.mesh)
    fn = self._compiled_for(batch)
    with jax.set_mesh(self.mesh):
      return fn(state, batch, extra)
