"""Memory planner: exact param/optimizer bytes on a real 8-device mesh, activation estimates against
JAX's saved residuals and XLA's memory analysis, and the 70B plan without allocating anything."""

import json
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO, run_multidevice
from selfreward_jax import plan as pl
from selfreward_jax.model import llama

SMALL = dict(vocab_size=1024, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=688,
             max_seq_len=1024, compute_dtype="bfloat16")

# the planner's activation figure (saved residuals + recompute + loss head + layer weights) over
# XLA CPU's temp bytes for the gradient of the SFT loss. Measured 0.96-1.41 on small models;
# the estimate is meant to be conservative.
XLA_TOLERANCE = (0.85, 1.5)


def test_param_and_optimizer_bytes_match_a_real_sharded_state():
  out = run_multidevice("""
      import json, jax
      from selfreward_jax import plan as pl, sharding as shd
      from selfreward_jax.model import llama
      from selfreward_jax.train import optim, state as st
      cfg = llama.LlamaConfig.tiny(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn_dim=176, max_seq_len=64)
      tx, _ = optim.make_optimizer(optim.OptimConfig(), total_steps=10)
      res = {}
      for shape in [(2, 2, 2), (1, 8, 1), (1, 2, 4)]:
        mesh = shd.make_mesh(shd.MeshConfig(*shape))
        sh = st.state_shardings(cfg, tx, mesh)
        params = shd.init_sharded_params(cfg, jax.random.PRNGKey(0), mesh)
        state = st.init_train_state(params, tx, sh, seed=0)
        actual_p = shd.bytes_per_device(state.params)
        actual_o = shd.bytes_per_device(state.opt_state)
        planned = pl.state_bytes(cfg, pl.abstract_mesh(shape), tx)
        res[str(shape)] = dict(params=sorted(set(actual_p.values())),
                               opt=sorted(set(actual_o.values())), planned=planned)
      print(json.dumps(res))
  """)
  res = json.loads(out.strip().splitlines()[-1])
  for shape, r in res.items():
    assert r["params"] == [r["planned"]["params"]], shape  # same on every device, and equal
    assert r["opt"] == [r["planned"]["opt_moments"] + r["planned"]["opt_other"]], shape
    assert r["planned"]["opt_moments"] == 2 * r["planned"]["params"], shape


def test_residual_formula_agrees_with_traced_residuals():
  """The fallback formula against JAX's own residual list: exact for ``full``, close for ``none``
  (the dots policies depend on how ``llama._dot`` is differentiated, so only the trace is used)."""
  for cd in ("bfloat16", "float32"):
    cfg = llama.LlamaConfig.tiny(**{**SMALL, "compute_dtype": cd})
    for policy, tol in (("full", 0.0), ("none", 0.1)):
      traced = pl.traced_layer_residual_bytes(cfg, policy, 2, 64)
      formula = pl.residual_bytes_per_token(cfg, policy, 64) * 2 * 64
      if policy == "none" and cd == "bfloat16":  # the bf16 copies of the layer's weights
        formula += pl._layer_param_bytes(cfg, pl.abstract_mesh((1, 1, 1)), 2, gathered=False)
      assert abs(traced - formula) <= tol * formula, (cd, policy, traced, formula)
    assert pl.traced_layer_residual_bytes(cfg, "dots", 2, 64) >= traced_full(cfg)


def traced_full(cfg):
  return pl.traced_layer_residual_bytes(cfg, "full", 2, 64)


@pytest.mark.parametrize("policy", ["none", "full", "dots"])
def test_activation_estimate_against_xla_memory_analysis(policy):
  from selfreward_jax.train import losses, state as st
  cfg = llama.LlamaConfig.tiny(**{**SMALL, "n_layers": 4, "remat": policy})
  b, t = 4, 256
  params = st.abstract_param_tree(cfg)
  tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
  loss = lambda p, tok: losses.sft_loss(p, cfg, tok, jnp.ones_like(tok))[0]
  mem = jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis()
  p = pl.plan(cfg, pl.Workload(rows=b, batch_rows=b, seq=t), (1, 1, 1))
  est = p.activations + p.recompute + p.loss_head + p.layer_weights
  ratio = est / mem.temp_size_in_bytes
  assert XLA_TOLERANCE[0] <= ratio <= XLA_TOLERANCE[1], (policy, est, mem.temp_size_in_bytes)
  # XLA's output is the gradient: the planner's grads figure on one device
  assert abs(mem.output_size_in_bytes - p.grads) < 1024


def test_70b_plans_on_64_abstract_devices_without_allocating():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  code = ("import resource, runpy, sys; sys.argv = ['plan', '--config=configs/llama2_70b.py', "
          "'--devices=64', '--mesh=1,8,8', '--hbm_gib=95']\n"
          "try:\n  runpy.run_module('selfreward_jax.plan', run_name='__main__')\n"
          "except SystemExit as e:\n  assert not e.code, e.code\n"
          # VmHWM, not ru_maxrss: Linux carries ru_maxrss of the forking (pytest) process over exec
          "print('maxrss_kb', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mesh (data=1, fsdp=8, tensor=8) on 64 devices" in out.stdout
  assert "fits:" in out.stdout
  rss_mb = int(out.stdout.split("maxrss_kb")[1].split()[0]) / 1024
  assert rss_mb < 1500, rss_mb  # one 70B layer alone would be 3.4 GB in f32
  # the figures: 69B params over fsdp*tensor = 64 shards
  cfg = llama.LlamaConfig.llama2_70b(remat="full", param_dtype="float32")
  p = pl.plan(cfg, pl.Workload(rows=32, batch_rows=16, seq=2048, slots=128, decode_len=3072,
                                 prefill_len=2048), (1, 8, 8))
  assert abs(p.params - cfg.num_params() * 4 / 64) / p.params < 0.01
  assert p.opt_moments == 2 * p.params
  kv_full = 2 * 80 * 128 * 3072 * 8 * 128 * 2  # k and v, bf16, [L, slots, S, K, H]
  assert p.kv_cache == kv_full // 64  # slots over data*fsdp = 8, kv heads over tensor = 8


def test_recommend_prefers_least_tensor_then_fsdp():
  cfg = llama.LlamaConfig.llama2_7b(param_dtype="float32", remat="full")
  w = pl.Workload(rows=32, batch_rows=16, seq=2048, slots=64, decode_len=3072, prefill_len=2048)
  best, fitting = pl.recommend(cfg, w, 16, 95 * pl.GiB)
  assert best is not None and best.mesh == fitting[0].mesh
  keys = [(p.mesh[2], p.mesh[1]) for p in fitting]
  assert keys == sorted(keys)
  assert all(p.peak <= 0.85 * 95 * pl.GiB and 16 % (p.mesh[0] * p.mesh[1]) == 0 for p in fitting)
  none, _ = pl.recommend(cfg, w, 4, 16 * pl.GiB)  # 7B training does not fit 4 x 16 GiB
  assert none is None


def test_cache_axes_and_prefill_budget_match_the_engine():
  from selfreward_jax.sampling import engine
  assert pl.CACHE_AXES == engine._CACHE_AXES
  assert pl.PREFIX_CACHE_AXES == engine._PREFIX_CACHE_AXES
  assert pl.PREFILL_BATCH_TOKENS == engine.PREFILL_BATCH_TOKENS


def test_cli_slice_table_and_errors():
  env = dict(os.environ, PYTHONPATH=REPO)
  run = lambda *a: subprocess.run([sys.executable, "-m", "selfreward_jax.plan", *a], env=env,
                                  cwd=REPO, capture_output=True, text=True, timeout=300)
  out = run("--config=configs/llama2_13b.py", "--slice=v5p-32", "--show=1")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "v5p-32" in out.stdout and "recommended" in out.stdout and "= peak" in out.stdout
  bad = run("--config=configs/llama2_13b.py", "--slice=v9-8")
  assert bad.returncode == 2 and "known:" in bad.stderr
  bad = run("--config=configs/llama2_13b.py", "--mesh=1,-1,2")
  assert bad.returncode == 2 and "--devices" in bad.stderr
