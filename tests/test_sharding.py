"""Sharding: a (data, fsdp, tensor) mesh on 8 fake CPU devices gives the single-device results."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from conftest import run_multidevice
from selfreward_jax import sharding as shd
from selfreward_jax.model.llama import LlamaConfig


def test_sharded_forward_backward_equals_single_device():
  out = run_multidevice("""
    import jax, jax.numpy as jnp, numpy as np
    from selfreward_jax import sharding as shd
    from selfreward_jax.model import llama
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 8
    cfg = llama.LlamaConfig.tiny(vocab_size=256, n_heads=4, n_kv_heads=2, dropout_rate=0.0)
    params = llama.init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 32)))

    def loss_fn(p, t):
      logits = llama.forward(p, t, cfg)
      logp = jax.nn.log_softmax(logits[:, :-1])
      return -jnp.mean(jnp.take_along_axis(logp, t[:, 1:, None], -1))

    ref_loss, ref_grads = jax.value_and_grad(loss_fn)(params, tokens)  # one device

    mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
    p_sh = shd.param_shardings(cfg, mesh)
    b_sh = shd.batch_sharding(mesh)
    sparams = shd.shard_params(params, cfg, mesh)
    stokens = jax.device_put(tokens, b_sh)
    with jax.set_mesh(mesh):
      step = jax.jit(jax.value_and_grad(loss_fn), in_shardings=(p_sh, b_sh), out_shardings=(None, p_sh))
      loss, grads = step(sparams, stokens)
    print("LOSS", float(ref_loss), float(loss))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4),
                 grads, ref_grads)
    # grads come back sharded like the params
    jax.tree.map(lambda g, s: None if g.sharding.is_equivalent_to(s, g.ndim) else
                 (_ for _ in ()).throw(AssertionError((g.sharding, s))), grads, p_sh)

    # every sharded weight: each device holds 1/(fsdp*tensor) of it; norms are replicated
    flat = jax.tree_util.tree_flatten_with_path(sparams)[0]
    for path, x in flat:
      name = jax.tree_util.keystr(path)
      per_dev = {s.device: s.data.nbytes for s in x.addressable_shards}
      assert len(per_dev) == 8
      frac = set(v / x.nbytes for v in per_dev.values())
      expected = 1.0 if "norm" in name else 1 / 4
      assert frac == {expected}, (name, x.sharding.spec, frac)
    print("BYTES_OK")

    # the sharded random init matches the host init (to an ulp: XLA may fuse the scale differently)
    sinit = shd.init_sharded_params(cfg, jax.random.key(0), mesh)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6), sinit, params)
    jax.tree.map(lambda a, s: None if a.sharding.is_equivalent_to(s, a.ndim) else
                 (_ for _ in ()).throw(AssertionError((a.sharding, s))), sinit, p_sh)
    print("INIT_OK")
  """)
  assert "BYTES_OK" in out and "INIT_OK" in out, out


def test_rules_table_maps_logical_axes():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), shd.MESH_AXES)
  assert shd.logical_to_spec(("layers", "embed", "heads", "head_dim"), (4, 64, 8, 16), mesh) == \
      P(None, "fsdp", "tensor", None)
  assert shd.logical_to_spec(("table_vocab", "table_embed"), (256, 64), mesh) == P("fsdp", "tensor")
  assert shd.logical_to_spec(("batch", "seq"), (8, 16), mesh) == P(("data", "fsdp"), None)
  # a mesh axis that does not divide the dim is dropped (replicated), never split unevenly
  assert shd.logical_to_spec(("batch", "seq"), (2, 16), mesh) == P("data", None)
  assert shd.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (4, 64, 3, 16), mesh) == \
      P(None, "fsdp", None, None)
  with pytest.raises(KeyError, match="no sharding rule"):
    shd.logical_to_spec(("bogus",))


def test_mesh_config_resolution_and_errors():
  assert shd.MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
  assert shd.MeshConfig(data=1, fsdp=-1, tensor=1).resolve(1) == (1, 1, 1)
  with pytest.raises(ValueError, match="needs 16 devices; 8 are available"):
    shd.MeshConfig(data=2, fsdp=4, tensor=2).resolve(8)
  with pytest.raises(ValueError, match="not divisible"):
    shd.MeshConfig(data=3, fsdp=-1, tensor=1).resolve(8)
  with pytest.raises(ValueError, match="at most one axis"):
    shd.MeshConfig(data=-1, fsdp=-1).resolve(8)
  mesh = shd.make_mesh(shd.MeshConfig())
  assert mesh.axis_names == shd.MESH_AXES


def test_70b_param_shardings_on_abstract_pod_mesh():
  """Plans the 70B layout on a 64-chip mesh without allocating anything."""
  cfg = LlamaConfig.llama2_70b()
  mesh = jax.sharding.AbstractMesh((1, 8, 8), shd.MESH_AXES)
  from selfreward_jax.model import llama
  specs = jax.tree.map(lambda ax, s: shd.logical_to_spec(ax, s, mesh), llama.param_axes(cfg),
                       llama.param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple) and
                       all(isinstance(a, (str, type(None))) for a in x))
  assert specs["layers"]["wk"] == P(None, "fsdp", "tensor", None)  # 8 kv heads over tensor=8
  assert specs["layers"]["wq"] == P(None, "fsdp", "tensor", None)
  assert specs["embed"] == P("fsdp", "tensor")
