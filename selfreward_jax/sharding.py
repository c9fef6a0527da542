"""Device mesh and logical-axis sharding rules (MaxText style).

Every parameter carries logical axis names (``model.llama.param_axes``); ``RULES`` maps each name to
mesh axes. Changing the parallelism means changing the table, never the model code.

Mesh axes:
  data    pure data parallelism (params replicated across it)
  fsdp    data parallelism with parameters and optimizer state sharded across it (ZeRO-3)
  tensor  Megatron-style tensor parallelism over heads / FFN / vocab

Batches are sharded over (data, fsdp). A mesh axis is dropped from a dimension it does not divide
(e.g. 8 KV heads over tensor=16): that dimension is replicated instead, never unevenly split.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

MeshAxes = Union[None, str, Tuple[str, ...]]

# logical axis -> mesh axis (or axes, or None = replicated)
RULES: Mapping[str, MeshAxes] = {
    # parameters
    "table_vocab": "fsdp",
    "table_embed": "tensor",
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    # activations
    "batch": BATCH_AXES,
    "seq": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "cache_seq": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the (data, fsdp, tensor) mesh axes. One size may be -1: it takes the remaining
  devices. The product must equal the number of devices used."""

  data: int = 1
  fsdp: int = -1
  tensor: int = 1

  def resolve(self, n_devices: int) -> Tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tensor]
    if sum(s == -1 for s in sizes) > 1:
      raise ValueError(f"MeshConfig{tuple(sizes)}: at most one axis may be -1")
    for name, s in zip(MESH_AXES, sizes):
      if s == 0 or s < -1:
        raise ValueError(f"MeshConfig.{name}={s}: must be a positive size or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if n_devices % known:
        raise ValueError(f"MeshConfig{tuple(sizes)}: {n_devices} devices are not divisible by {known}")
      sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
      raise ValueError(f"MeshConfig(data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs "
                       f"{math.prod(sizes)} devices; {n_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_config: MeshConfig = MeshConfig(), devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types over ``devices`` (default: all devices).

  Uses ``jax.make_mesh`` for a topology-aware device order when all devices are used.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_config.resolve(len(devices))
  auto = (jax.sharding.AxisType.Auto,) * 3
  if len(devices) == jax.device_count():
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def _axis_size(mesh, axes: MeshAxes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence[Optional[str]], shape: Optional[Sequence[int]] = None,
                    mesh=None, rules: Mapping[str, MeshAxes] = RULES) -> P:
  """PartitionSpec for a tensor with the given logical axes.

  With ``shape`` and ``mesh`` (a Mesh or AbstractMesh), mesh axes that do not divide a dimension
  are dropped for that dimension, and a mesh axis already used by an earlier dimension is not
  reused.
  """
  used = set()
  spec = []
  for i, name in enumerate(logical):
    axes = rules.get(name) if name is not None else None
    if name is not None and name not in rules:
      raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    if axes is None:
      spec.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    if mesh is not None:
      axes = tuple(a for a in axes if a in mesh.shape and a not in used)
      if shape is not None:
        kept = []
        for a in axes:
          if shape[i] % (_axis_size(mesh, tuple(kept) + (a,))) == 0:
            kept.append(a)
        axes = tuple(kept)
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def tree_shardings(axes_tree, shapes_tree, mesh: Mesh, rules: Mapping[str, MeshAxes] = RULES):
  """NamedShardings for a pytree of logical-axis tuples and a matching pytree of shapes."""
  is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
  return jax.tree.map(
      lambda ax, shp: NamedSharding(mesh, logical_to_spec(ax, tuple(shp), mesh, rules)),
      axes_tree, shapes_tree, is_leaf=is_axes)


def param_shardings(config, mesh: Mesh, rules: Mapping[str, MeshAxes] = RULES):
  """NamedSharding of every Llama parameter on ``mesh``."""
  from selfreward_jax.model import llama
  return tree_shardings(llama.param_axes(config), llama.param_shapes(config), mesh, rules)


def shard_params(params, config, mesh: Mesh, rules: Mapping[str, MeshAxes] = RULES):
  """Places an (unsharded or differently sharded) param pytree onto ``mesh``."""
  return jax.device_put(params, param_shardings(config, mesh, rules))


def init_sharded_params(config, rng: jax.Array, mesh: Mesh, rules: Mapping[str, MeshAxes] = RULES):
  """``init_params`` run under jit with sharded outputs: no device ever holds a full copy."""
  from selfreward_jax.model import llama
  shardings = param_shardings(config, mesh, rules)
  return jax.jit(llama.init_params, static_argnums=0, out_shardings=shardings)(config, rng)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Sharding of a [B, ...] batch: B over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def current_mesh():
  """The mesh set with ``jax.set_mesh`` (an AbstractMesh inside jit), or None."""
  try:
    mesh = jax.sharding.get_abstract_mesh()
  except Exception:  # pragma: no cover - very old jax
    return None
  if mesh is None or mesh.empty:
    return None
  return mesh


def constrain(x: jax.Array, logical: Sequence[Optional[str]]) -> jax.Array:
  """``with_sharding_constraint`` by logical axes when a mesh is set (``jax.set_mesh``); else a
  no-op, letting XLA propagate the input shardings."""
  mesh = current_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))


def bytes_per_device(tree) -> dict:
  """{device: bytes of ``tree``'s shards on it} for a pytree of jax Arrays."""
  out = {}
  for leaf in jax.tree.leaves(tree):
    for s in leaf.addressable_shards:
      out[s.device] = out.get(s.device, 0) + s.data.nbytes
  return out
