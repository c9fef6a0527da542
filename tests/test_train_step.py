"""The shared train step: accumulation = full batch, schedules, donation, dropout rng, bf16, remat,
and the sharded step on 8 fake CPU devices (data=2, fsdp=2, tensor=2) = the single-device step."""

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfreward_jax import sharding as shd
from selfreward_jax.model import llama
from selfreward_jax.train import optim, state as st
from selfreward_jax.train.objectives import sft_objective
from selfreward_jax.train.step import TrainStep
from test_train_support import FAST, init_params, run_python

CONFIG = llama.LlamaConfig.tiny(vocab_size=128)


def sft_batch(m, b, t=24, seed=0):
  """Random SFT batch [m, b, t] with ragged lengths and response masks (uneven target counts)."""
  rng = np.random.default_rng(seed)
  tokens, mask, seg = (np.zeros((m * b, t), np.int32) for _ in range(3))
  for r in range(m * b):
    n = int(rng.integers(6, t + 1))
    tokens[r, :n] = rng.integers(3, CONFIG.vocab_size, n)
    mask[r, int(rng.integers(1, n)):n] = 1
    seg[r, :n] = 1
  pos = np.broadcast_to(np.arange(t, dtype=np.int32), (m * b, t))
  batch = {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}
  return {k: np.ascontiguousarray(v).reshape(m, b, t) for k, v in batch.items()}


# Adam's update m / (sqrt(v) + eps) is ~ +-lr for any gradient entry much larger than eps, so
# float-rounding noise on entries that are ~1e-9 (e.g. lm_head columns of unseen tokens) flips
# whole-lr updates. Equivalence tests therefore use eps=1e-6, which damps only such entries.
EQUIV = optim.OptimConfig(learning_rate=1e-3, end_learning_rate=1e-4, eps=1e-6)


@functools.lru_cache(maxsize=None)
def _step(config, optim_config, total):
  """One TrainStep (so one compilation per batch shape) per setting, shared by the tests."""
  mesh = shd.make_mesh(shd.MeshConfig(1, 1, 1))
  tx, schedule = optim.make_optimizer(optim_config, total)
  sh = st.state_shardings(config, tx, mesh)
  return TrainStep(sft_objective(config), tx, schedule, sh, mesh, compiler_options=FAST), tx, sh


def setup(config=CONFIG, optim_config=EQUIV, total=10):
  step, tx, sh = _step(config, optim_config, total)
  state = st.init_train_state(init_params(config), tx, sh, seed=0)
  return step, state


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_microbatch_accumulation_equals_full_batch():
  big = sft_batch(1, 8)
  split = {k: v.reshape(4, 2, -1) for k, v in big.items()}
  step1, s1 = setup()
  step4, s4 = setup()
  for _ in range(2):
    s1, m1 = step1(s1, big)
    s4, m4 = step4(s4, split)
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  np.testing.assert_allclose(flat(s4.params), flat(s1.params), atol=1e-5)
  assert float(m1["n_target_tokens"]) == big["loss_mask"][..., 1:].sum()
  assert int(s1.step) == 2


def test_loss_is_token_mean_nll_and_lr_follows_schedule():
  batch = sft_batch(4, 2, seed=1)
  step, state = setup()
  params0 = jax.tree.map(np.asarray, state.params)
  state, m = step(state, batch)
  from selfreward_jax.train import losses  # pylint: disable=g-import-not-at-top
  flat_b = {k: v.reshape(8, -1) for k, v in batch.items()}
  want, _ = losses.sft_loss(params0, CONFIG, flat_b["tokens"], flat_b["loss_mask"],
                            segment_ids_bt=flat_b["segment_ids"])
  np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(m["lr"]), 1e-3, rtol=1e-6)
  state, m = step(state, batch)
  np.testing.assert_allclose(float(m["lr"]), optim.make_schedule(EQUIV, 10)(1), rtol=1e-6)
  assert float(m["lr"]) < 1e-3


def test_paper_schedules():
  sft = optim.make_schedule(optim.OptimConfig.sft(), 100)
  np.testing.assert_allclose([sft(0), sft(50), sft(100)], [5.5e-6, (5.5e-6 + 1.1e-6) / 2, 1.1e-6],
                             rtol=1e-5)
  dpo = optim.make_schedule(optim.OptimConfig.dpo(), 100)
  np.testing.assert_allclose([dpo(0), dpo(25), dpo(100)], [1e-6, 1e-6 - 0.25 * 9e-7, 1e-7],
                             rtol=1e-5)
  warm = optim.make_schedule(optim.OptimConfig.sft(warmup_steps=10), 110)
  np.testing.assert_allclose([warm(0), warm(9), warm(10), warm(110)],
                             [5.5e-7, 5.5e-6, 5.5e-6, 1.1e-6], rtol=1e-5)
  assert all(float(sft(s + 1)) <= float(sft(s)) for s in range(100))


def test_state_is_donated():
  step, state = setup()
  old = state
  state, _ = step(state, sft_batch(1, 8))
  assert old.params["embed"].is_deleted() and not state.params["embed"].is_deleted()


def test_dropout_is_seeded_by_step():
  cfg = CONFIG.replace(dropout_rate=0.1)
  batch = sft_batch(1, 8, seed=2)
  tiny_lr = EQUIV.replace(learning_rate=1e-9, end_learning_rate=1e-9)  # the loss moves by dropout only
  losses_a, losses_b = [], []
  for out in (losses_a, losses_b):
    step, state = setup(cfg, tiny_lr)
    for _ in range(3):
      state, m = step(state, batch)
      out.append(float(m["loss"]))
  assert losses_a == losses_b  # same seed, same steps: bit-identical
  assert len(set(losses_a)) == 3  # a fresh mask every step
  step0, state0 = setup()
  _, m0 = step0(state0, batch)
  assert abs(float(m0["loss"]) - losses_a[0]) > 1e-4  # dropout is on


def test_bf16_compute_keeps_f32_master_weights():
  batch = sft_batch(1, 8, seed=3)
  _, m32 = setup()[0](setup()[1], batch)
  step16, s16 = setup(CONFIG.replace(compute_dtype="bfloat16"))
  s16, m16 = step16(s16, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.opt_state) if x.ndim)
  np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=1e-2)
  assert float(m16["loss"]) != float(m32["loss"])


def test_train_config_sets_the_numerics():
  from selfreward_jax.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  base = CONFIG.replace(param_dtype="bfloat16", dropout_rate=0.0)
  cfg = TrainConfig(dropout_rate=0.1, remat="full", compute_dtype="bfloat16").model_config(base)
  assert (cfg.param_dtype, cfg.dropout_rate, cfg.remat, cfg.compute_dtype) == (
      "float32", 0.1, "full", "bfloat16")
  kept = TrainConfig(dropout_rate=None).model_config(base)
  assert (kept.dropout_rate, kept.remat, kept.compute_dtype) == (0.0, "none", "float32")
  # bf16 params handed to the trainer become float32 master weights
  step, tx, sh = _step(CONFIG, EQUIV, 10)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params(CONFIG))
  state = st.init_train_state(bf16, tx, sh, seed=0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def test_batch_rows_must_divide_the_mesh():
  from selfreward_jax.train.step import check_batch  # pylint: disable=g-import-not-at-top
  mesh = shd.make_mesh(shd.MeshConfig(1, 1, 1))
  check_batch(sft_batch(2, 3), mesh)
  with pytest.raises(ValueError, match="microbatches"):
    check_batch({"tokens": np.zeros(4)}, mesh)


SHARDED = textwrap.dedent("""
    import json, tempfile
    import jax, numpy as np
    from selfreward_jax import sharding as shd
    from selfreward_jax.model import llama
    from selfreward_jax.train import optim, state as st
    from selfreward_jax.train.checkpoints import Checkpointer
    from selfreward_jax.train.objectives import dpo_objective, sft_objective
    from selfreward_jax.train.step import TrainStep
    from test_train_step import CONFIG, FAST, sft_batch, flat, init_params
    assert jax.device_count() == 8
    tx, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3, eps=1e-6), 10)
    params = init_params(CONFIG)
    rng = np.random.default_rng(0)
    sft = sft_batch(2, 4)
    dpo = {}
    for side in ("chosen", "rejected"):
      b = sft_batch(2, 4, seed=1 if side == "chosen" else 2)
      dpo.update({f"{side}_tokens": b["tokens"], f"{side}_loss_mask": b["loss_mask"],
                  f"{side}_attention_mask": b["segment_ids"]})
    dpo["ref_chosen_logps"] = rng.normal(-60, 5, (2, 4)).astype(np.float32)
    dpo["ref_rejected_logps"] = rng.normal(-60, 5, (2, 4)).astype(np.float32)
    out = {}
    for name, mc in (("one", shd.MeshConfig(1, 1, 1)), ("mesh", shd.MeshConfig(2, 2, 2))):
      devices = jax.devices()[:1] if name == "one" else jax.devices()
      mesh = shd.make_mesh(mc, devices)
      sh = st.state_shardings(CONFIG, tx, mesh)
      for obj_name, obj, batch in (("sft", sft_objective(CONFIG), sft),
                                   ("dpo", dpo_objective(CONFIG, beta=0.1), dpo)):
        state = st.init_train_state(jax.tree.map(np.asarray, params), tx, sh, seed=0)
        step = TrainStep(obj, tx, schedule, sh, mesh, compiler_options=FAST)
        losses = []
        for _ in range(2):
          state, m = step(state, batch)
          losses.append(float(m["loss"]))
        st.check_shardings(state, sh)
        out[name + obj_name] = (losses, flat(state.params))
      if name == "mesh":
        wq_mu = state.opt_state[1][0].mu["layers"]["wq"]
        assert wq_mu.sharding.spec == state.params["layers"]["wq"].sharding.spec, wq_mu.sharding
        assert wq_mu.sharding.spec != jax.sharding.PartitionSpec(), wq_mu.sharding
        # save on (2,2,2), restore onto other meshes: values identical, laid out as asked
        d = tempfile.mkdtemp()
        with Checkpointer(d) as ck:
          ck.save(2, state, {"data_position": {"epoch": 0, "index": 8}})
        for other in (shd.make_mesh(shd.MeshConfig(1, 4, 2)),
                      shd.make_mesh(shd.MeshConfig(1, 1, 1), jax.devices()[3:4])):
          sh2 = st.state_shardings(CONFIG, tx, other)
          with Checkpointer(d) as ck:
            restored, meta = ck.restore(2, st.abstract_state(CONFIG, tx, sh2))
          st.check_shardings(restored, sh2)
          assert meta["data_position"]["index"] == 8
          assert all(np.array_equal(np.asarray(a), np.asarray(b))
                     for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)))
    for obj_name in ("sft", "dpo"):
      (l1, p1), (l8, p8) = out["one" + obj_name], out["mesh" + obj_name]
      np.testing.assert_allclose(l8, l1, rtol=1e-5)
      np.testing.assert_allclose(p8, p1, atol=1e-5)
      assert np.abs(p1 - flat(params)).max() > 1e-4  # the params did move
    print(json.dumps({k: v[0] for k, v in out.items()}))
""")


def test_sharded_step_equals_single_device_step():
  """8 fake CPU devices in a subprocess (this process already initialised jax with 1)."""
  import os  # pylint: disable=g-import-not-at-top
  code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n" + SHARDED
  print(run_python(code, devices=8))
