"""The train state (step, float32 master params, optimizer state, rng) and its shardings.

Parameters follow ``sharding.param_shardings``; every optimizer leaf that mirrors a parameter
(Adam moments) gets that parameter's sharding, every other leaf (counts) is replicated. (On this
jax, ``jax.jit(opt.init)`` on sharded params returns unsharded moments, so the shardings are
derived explicitly from ``jax.eval_shape`` and passed as ``out_shardings``.)
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from selfreward_jax import sharding as shd
from selfreward_jax.model import llama


class TrainState(NamedTuple):
  """Everything a resumed run needs on device.

  step: int32 scalar, number of optimizer updates applied so far.
  params: float32 master weights (``llama`` param pytree).
  opt_state: the optax state for ``params``.
  rng: uint32 [2] base PRNG key; step s uses ``fold_in(rng, s)`` (dropout), so the same seed gives
    the same randomness whether or not the run was interrupted.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def state_shardings(config: llama.LlamaConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: Mapping = shd.RULES) -> TrainState:
  """A ``TrainState`` of ``NamedSharding``s for ``config``'s params and ``tx``'s state."""
  param_sh = shd.param_shardings(config, mesh, rules)
  rep = shd.replicated(mesh)
  abstract_params = abstract_param_tree(config)
  opt_shape = jax.eval_shape(tx.init, abstract_params)
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, opt_shape, param_sh,
                                 transform_non_params=lambda _: rep)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)


def abstract_param_tree(config: llama.LlamaConfig):
  """``jax.ShapeDtypeStruct`` pytree of the float32 master params (no sharding)."""
  shapes = llama.param_shapes(config)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def abstract_state(config: llama.LlamaConfig, tx: optax.GradientTransformation,
                   shardings: TrainState) -> TrainState:
  """``ShapeDtypeStruct``s with shardings: the restore target of a checkpoint onto ``shardings``'
  mesh (which may differ from the mesh that saved it)."""
  params = abstract_param_tree(config)
  shapes = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=params,
      opt_state=jax.eval_shape(tx.init, params),
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
  )
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def init_train_state(params, tx: optax.GradientTransformation, shardings: TrainState,
                     seed: int) -> TrainState:
  """A fresh state at step 0 from ``params`` (cast to float32, placed on ``shardings``).

  ``params`` already on the right shardings in float32 are used in place (no copy): they belong
  to the state from now on, and the train step donates them.
  """
  params = jax.tree.map(lambda p: p if p.dtype == jnp.float32 else p.astype(jnp.float32), params)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  rng = jax.device_put(np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)), np.uint32),
                       shardings.rng)
  return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)


def check_shardings(state: TrainState, shardings: TrainState) -> None:
  """Raises if any leaf of ``state`` is not laid out as ``shardings`` says (a test/debug aid)."""
  def check(path, x, sh):
    if not x.sharding.is_equivalent_to(sh, x.ndim):
      raise AssertionError(f"{jax.tree_util.keystr(path)}: sharding {x.sharding} != {sh}")
  jax.tree_util.tree_map_with_path(check, state, shardings)


__all__ = ["TrainState", "state_shardings", "abstract_state", "abstract_param_tree",
           "init_train_state", "check_shardings"]
