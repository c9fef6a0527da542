"""Engine (JetStream 0.2.2 contract): prefill + insert + generate reproduce the full forward's
logits, ResultTokens layout, rng handling, budgets, cache end, truncation, errors, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_multidevice
from selfreward_jax.model import llama
from selfreward_jax.sampling.engine import Engine, bucket_length


@pytest.fixture(scope="module")
def model():
  config = llama.LlamaConfig.tiny(vocab_size=128, max_seq_len=64)
  return config, llama.init_params(config, jax.random.key(0))


def _engine(model, **kw):
  config, params = model
  kw = dict(dict(max_concurrent_decodes=3, max_prefill_length=16, max_cache_length=48), **kw)
  return Engine(config, params, **kw)


def _padded(prompt, t=16):
  out = np.zeros((t,), np.int32)
  out[:len(prompt)] = prompt
  return out


@pytest.mark.parametrize("per_layer", [True, False])
def test_prefill_and_decode_logits_equal_full_forward(model, per_layer):
  """Both cache layouts (per layer: the CPU default; stacked under the layer scan), with the
  params as stored and as ``sampling_params`` lays them out."""
  config, params = model
  eng = _engine(model, per_layer=per_layer)
  assert jax.tree.leaves(eng.init_decode_state().cache)[0].ndim == (4 if per_layer else 5)
  step_params = eng.sampling_params(params)
  assert isinstance(step_params["layers"], tuple) == per_layer
  prompts = {0: [1, 5, 9, 13, 17], 2: [1, 7, 3, 8, 2, 9, 4, 10, 11]}
  state = eng.init_decode_state()
  seen = {slot: [] for slot in prompts}
  for slot, p in prompts.items():
    prefix = eng.prefill(params=params, padded_tokens=_padded(p), true_length=len(p))
    seen[slot].append(np.asarray(prefix.logits_v))
    state = eng.insert(prefix, state, slot)
  tokens = {slot: [] for slot in prompts}
  for i in range(6):
    state, result = eng.generate(params if i % 2 else step_params, state)
    data = np.asarray(result.data)
    logits = np.asarray(state.logits_bv)
    for slot in prompts:
      tokens[slot].append(int(data[slot, 0]))
      seen[slot].append(logits[slot])
  for slot, p in prompts.items():
    seq = p + tokens[slot]
    full = np.asarray(llama.forward(params, jnp.asarray([seq]), config)[0])
    np.testing.assert_allclose(np.stack(seen[slot]), full[len(p) - 1:], atol=1e-5, rtol=1e-5)
    assert tokens[slot] == [int(np.argmax(full[len(p) - 1 + i])) for i in range(6)]


def test_result_tokens_layout_and_validity(model):
  config, params = model
  eng = _engine(model)
  state = eng.init_decode_state()
  p = [1, 4, 6]
  prefix = eng.prefill(params=params, padded_tokens=_padded(p), true_length=3, max_new_tokens=3)
  state = eng.insert(prefix, state, 1)
  rows = []
  for _ in range(4):
    state, result = eng.generate(params, state)
    assert result.data.shape == (3, 3) and result.data.dtype == jnp.int32
    assert result.samples_per_slot == eng.samples_per_slot == 1
    rows.append(result.convert_to_numpy().get_result_at_slot(1))
  assert [int(r.valid[0, 0]) for r in rows] == [1, 1, 1, 0]  # budget of 3 new tokens
  assert [int(r.lengths[0]) for r in rows[:3]] == [1, 2, 3]
  free = result.convert_to_numpy().get_result_at_slot(0)
  assert int(free.valid[0, 0]) == 0


def test_slot_stops_at_cache_end(model):
  config, params = model
  eng = _engine(model, max_cache_length=20)
  state = eng.init_decode_state()
  p = list(range(1, 17))  # 16 tokens: room for 4 more positions
  state = eng.insert(eng.prefill(params=params, padded_tokens=np.array(p, np.int32),
                                 true_length=16), state, 0)
  valid = []
  for _ in range(6):
    state, result = eng.generate(params, state)
    valid.append(int(result.data[0, 1]))
  assert valid == [1, 1, 1, 1, 0, 0]


def test_rng_fresh_per_request_and_explicit_keys(model):
  config, params = model
  hot = dict(params, lm_head=params["lm_head"] * 10.0)  # spread-out but not flat logits
  eng = _engine((config, hot), temperature=1.0)
  p = [1, 2, 3, 4]
  prefix = eng.prefill(params=hot, padded_tokens=_padded(p), true_length=4)

  def run(keys):
    state = eng.init_decode_state()
    for slot, k in enumerate(keys):
      state = eng.insert(prefix, state, slot, rng=k)  # the same prefix, inserted 3 times
    out = []
    for _ in range(8):
      state, result = eng.generate(hot, state)
      out.append(np.asarray(result.data[:, 0]))
    return np.stack(out, 1)  # [slot, step]

  fresh = run([None, None, None])
  assert len({tuple(r) for r in fresh}) == 3  # each request got its own key
  k = np.asarray(jax.random.key_data(jax.random.key(11)))
  same = run([k, k, None])
  np.testing.assert_array_equal(same[0], same[1])
  assert not np.array_equal(same[0], same[2])
  assert len(set(same[0].tolist())) > 1  # a fresh key every step


def test_overlong_jetstream_input_is_left_truncated_and_counted(model):
  from jetstream.engine import token_utils
  config, params = model
  eng = _engine(model)
  tokens = np.arange(3, 28, dtype=np.int32)  # 25 tokens + BOS > 16
  padded, true_length = token_utils.pad_tokens(tokens, 1, 0, max_prefill_length=16,
                                               jax_padding=False)
  assert true_length == 26 and padded.shape == (16,)  # JetStream's unclamped length
  prefix = eng.prefill(params=params, padded_tokens=padded, true_length=true_length)
  assert eng.truncated_prompts == 1 and int(prefix.true_length) == 16
  want = llama.forward(params, jnp.asarray(tokens[-16:][None]), config)[0, -1]
  np.testing.assert_allclose(np.asarray(prefix.logits_v), np.asarray(want), atol=1e-5)


def test_engine_errors(model):
  config, params = model
  eng = _engine(model)
  prefix = eng.prefill(params=params, padded_tokens=_padded([1]), true_length=1)
  with pytest.raises(NotImplementedError, match="existing_prefix"):
    eng.prefill(params=params, existing_prefix=prefix, padded_tokens=_padded([1]), true_length=1)
  with pytest.raises(ValueError, match="at least one token"):
    eng.prefill(params=params, padded_tokens=_padded([1]), true_length=0)
  with pytest.raises(ValueError, match="max_prefill_length"):
    eng.prefill(params=params, padded_tokens=np.ones(32, np.int32), true_length=3)
  with pytest.raises(ValueError, match="top_p"):
    eng.prefill(params=params, padded_tokens=_padded([1]), true_length=1, top_p=1.5)
  with pytest.raises(ValueError, match="power"):
    _engine(model, max_prefill_length=24)
  with pytest.raises(ValueError, match="tokenizer_path"):
    eng.get_tokenizer()
  assert eng.params is params and eng.colocated_cpus is None
  loaded = eng.load_params()
  assert eng.sampling_params(loaded) is loaded
  assert eng.max_concurrent_decodes == 3 and eng.max_prefill_length == 16
  assert [bucket_length(n, 64) for n in (1, 16, 17, 33, 64)] == [16, 16, 32, 64, 64]


def test_sharded_engine_on_8_devices_matches_one_device():
  out = run_multidevice("""
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from selfreward_jax import sharding as shd
    from selfreward_jax.model import llama
    from selfreward_jax.sampling.sampler import Sampler
    config = llama.LlamaConfig.tiny(vocab_size=128, max_seq_len=64)
    params = llama.init_params(config, jax.random.key(0))
    params = dict(params, lm_head=params["lm_head"] * 40.0)
    mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = shd.shard_params(params, config, mesh)
    prompts = [[1, 5, 9], [1, 7, 3, 8, 2, 9, 4, 10, 11, 40, 41, 42, 43, 44, 45, 46, 47], [1, 2]]
    kw = dict(max_new_tokens=12, num_samples=3, temperature=0.7, top_p=0.9, seed=3)
    s8 = Sampler(config, sharded, max_concurrent=8, max_prefill_length=32, max_decode_length=64)
    assert s8.engine.mesh is mesh
    state = s8.engine.init_decode_state()
    assert s8.engine.per_layer  # CPU default: one [b, k, s, h] array per layer
    assert state.cache.k_lbksh[0].sharding.spec == P(("data", "fsdp"), "tensor", None, None), state.cache.k_lbksh[0].sharding
    assert state.logits_bv.sharding.spec == P(("data", "fsdp"), None)
    one = shd.make_mesh(shd.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    s1 = Sampler(config, shd.shard_params(params, config, one), max_concurrent=3,
                 max_prefill_length=32, max_decode_length=64)
    greedy8 = s8.generate(prompts, max_new_tokens=12)
    greedy1 = s1.generate(prompts, max_new_tokens=12)
    assert greedy8 == greedy1, (greedy8, greedy1)
    t8, lp8 = s8.generate(prompts, return_logprobs=True, **kw)
    t1, lp1 = s1.generate(prompts, return_logprobs=True, **kw)
    assert t8 == t1
    np.testing.assert_allclose(np.concatenate([np.ravel(x) for p in lp8 for x in p]),
                               np.concatenate([np.ravel(x) for p in lp1 for x in p]), atol=1e-4)
    print("OK")
  """)
  assert "OK" in out


def test_sampling_params_cast_once_master_untouched(model):
  """bf16 compute: every weight the decode loop reads is cast once (per layer on CPU: the layer
  stack is unstacked into per-layer dicts; the stacked layout on CPU leaves the stack as stored,
  cast per layer in the step); the float32 master params are not touched; params already in the
  decode form come back as the same object; host (numpy) leaves are moved once."""
  config, params = model
  bf = config.replace(compute_dtype="bfloat16")
  eng = Engine(bf, params, max_concurrent_decodes=2, max_prefill_length=16, max_cache_length=48)
  assert eng.per_layer
  cast = eng.sampling_params(params)
  for name in ("embed", "lm_head", "final_norm"):
    assert cast[name].dtype == jnp.bfloat16 and params[name].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(cast[name]),
                                  np.asarray(params[name].astype(jnp.bfloat16)))
  assert len(cast["layers"]) == config.n_layers
  for i, lp in enumerate(cast["layers"]):
    for name, w in lp.items():
      assert w.dtype == jnp.bfloat16 and params["layers"][name].dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(w),
                                    np.asarray(params["layers"][name][i].astype(jnp.bfloat16)))
  assert eng.sampling_params(cast) is cast and eng.params is params
  stacked = Engine(bf, params, max_concurrent_decodes=2, max_prefill_length=16,
                   max_cache_length=48, per_layer=False)
  scast = stacked.sampling_params(params)
  assert scast["layers"] is params["layers"]  # CPU, stacked: see the engine docstring
  # per-layer params given to a stacked engine are stacked back (same values)
  back = stacked.sampling_params(cast)
  np.testing.assert_array_equal(np.asarray(back["layers"]["wq"]),
                                np.asarray(params["layers"]["wq"].astype(jnp.bfloat16)))
  f32 = _engine(model, per_layer=False)
  assert f32.sampling_params(params) is params
  unstacked = _engine(model).sampling_params(params)
  assert _engine(model).sampling_params(unstacked) is unstacked
  host = _engine(model).sampling_params(jax.tree.map(np.asarray, params))
  assert all(isinstance(w, jax.Array) for w in jax.tree.leaves(host))


def test_per_layer_and_stacked_layouts_give_the_same_samples(model):
  """The Sampler on the per-layer decode (CPU default) and on the stacked layer scan: the same
  greedy and T=0.8 / top-p 0.9 tokens and log-probs in f32; the same greedy tokens in bf16 (where
  XLA fuses the casts differently, so sampled tokens may differ in near-ties)."""
  from selfreward_jax.sampling.sampler import Sampler  # pylint: disable=g-import-not-at-top
  config, params = model
  params = dict(params, lm_head=params["lm_head"] * 30.0)  # peaked logits: few near-ties
  prompts = [[1, 5, 9], [1, 7, 3, 8, 2, 9, 4, 10, 11], [1, 2]]
  for cd in ("float32", "bfloat16"):
    out = {}
    for per_layer in (True, False):
      smp = Sampler(config.replace(compute_dtype=cd), params, max_concurrent=2,
                    max_prefill_length=16, max_decode_length=48)
      smp.engine = Engine(smp.config, params, max_concurrent_decodes=2, max_prefill_length=16,
                          max_cache_length=48, per_layer=per_layer)
      greedy = smp.generate(prompts, max_new_tokens=10)
      sampled, lps = smp.generate(prompts, max_new_tokens=10, num_samples=2, temperature=0.8,
                                  top_p=0.9, seed=4, return_logprobs=True)
      out[per_layer] = (greedy, sampled, lps)
    assert out[True][0] == out[False][0], cd
    if cd == "float32":
      assert out[True][1] == out[False][1]
      np.testing.assert_allclose(np.concatenate([np.ravel(x) for p in out[True][2] for x in p]),
                                 np.concatenate([np.ravel(x) for p in out[False][2] for x in p]),
                                 atol=1e-5)


def test_cpu_cache_dtype_defaults_to_float32_and_matches_full_forward(model):
  """bf16 compute on CPU keeps the slot cache in float32 (holding the bf16 K/V); a bf16 cache can
  be asked for; both reproduce the bf16 full forward's logits to bf16 precision."""
  config, params = model
  bf = config.replace(compute_dtype="bfloat16")
  p = [1, 5, 9, 13, 17]
  full = np.asarray(llama.forward(params, jnp.asarray([p + [3]]), bf)[0])
  for cache_dtype, want in ((None, jnp.float32), ("bfloat16", jnp.bfloat16)):
    eng = Engine(bf, params, max_concurrent_decodes=2, max_prefill_length=16, max_cache_length=48,
                 cache_dtype=cache_dtype)
    state = eng.init_decode_state()
    assert all(c.dtype == want for c in jax.tree.leaves(state.cache))
    prefix = eng.prefill(params=params, padded_tokens=_padded(p), true_length=len(p))
    assert all(c.dtype == want for c in jax.tree.leaves(prefix.cache))
    np.testing.assert_allclose(np.asarray(prefix.logits_v), full[len(p) - 1], atol=2e-2)


@pytest.mark.parametrize("per_layer", [True, False])
def test_growing_decode_state_continues_exactly(model, per_layer):
  """A state allocated with fewer cache slots: generate_steps stops when a running slot reaches
  the allocated end (without finishing it), grow_cache extends it, and the tokens and logits are
  those of a state of max_cache_length from the start, in both cache layouts. Misuse raises."""
  config, params = model
  config = config.replace(max_seq_len=160)
  eng = Engine(config, params, max_concurrent_decodes=2, max_prefill_length=16,
               max_cache_length=160, per_layer=per_layer)
  assert eng.cache_buckets() == (64, 128, 160)
  assert [eng.cache_bucket(n) for n in (1, 64, 65, 129, 500)] == [64, 64, 128, 160, 160]
  hot = dict(params, lm_head=params["lm_head"] * 30.0)
  p = [1, 5, 9, 13, 17, 3, 8]
  prefix = eng.prefill(params=hot, padded_tokens=_padded(p), true_length=len(p))

  def run(cache_length):
    state = eng.insert(prefix, eng.init_decode_state(cache_length=cache_length), 1)
    tokens, steps = [], []
    while len(tokens) < 140:
      state, toks, valid, _, n, done = eng.generate_steps(hot, state, num_steps=40)
      n = int(n)
      steps.append(n)
      tokens += np.asarray(toks)[:n, 1][np.asarray(valid)[:n, 1]].tolist()
      if n < 40 and not bool(done[1]):
        state = eng.grow_cache(state, eng.cache_bucket(state.cache.length + 1))
    return tokens, steps, np.asarray(state.logits_bv[1])

  full, full_steps, full_logits = run(None)
  grown, grown_steps, grown_logits = run(64)
  assert full == grown and len(full) == 153
  assert full_steps == [40, 40, 40, 33]  # the last token at position 159: the cache end
  assert grown_steps == [40, 17, 40, 24, 32]  # stopped at positions 64 and 128, grown each time
  np.testing.assert_allclose(grown_logits, full_logits, atol=1e-5)
  state = eng.init_decode_state(cache_length=128)
  with pytest.raises(ValueError, match="grow_cache: 64"):
    eng.grow_cache(state, 64)
  with pytest.raises(ValueError, match="max_cache_length"):
    eng.init_decode_state(cache_length=161)
  with pytest.raises(ValueError, match="grow_cache first"):
    eng.insert(prefix, eng.init_decode_state(cache_length=8), 0)


@pytest.mark.parametrize("per_layer", [True, False])
def test_prefill_batch_and_insert_many_equal_prefill_and_insert(model, per_layer):
  """n prompts prefilled in one [n, t] forward and placed by one insert_many (a row going to two
  slots, three inserts padded to four) give the state of prefill + insert one by one; the slot
  the padding entry would address (none: it is dropped) and the untouched slot stay free."""
  config, params = model
  eng = _engine(model, max_concurrent_decodes=5, per_layer=per_layer)
  rng = np.random.default_rng(4)
  prompts = [[1] + rng.integers(3, 128, size=n - 1).tolist() for n in (5, 16, 9)]
  tokens_nt = np.stack([_padded(p) for p in prompts] + [_padded([1])])
  settings = dict(temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=7)
  batch = eng.prefill_batch(params=params, padded_tokens_nt=tokens_nt,
                            true_lengths_n=[5, 16, 9, 1], **settings)
  assert batch.logits_nv.shape == (4, 128) and batch.cache.length == 16
  rows, slots = [2, 0, 2], [4, 1, 0]
  keys = np.arange(6, dtype=np.uint32).reshape(3, 2) + 11
  many = eng.insert_many(batch, eng.init_decode_state(), rows, slots, keys)
  one = eng.init_decode_state()
  for r, s, k in zip(rows, slots, keys):
    prefix = eng.prefill(params=params, padded_tokens=tokens_nt[r], true_length=len(prompts[r]),
                         **settings)
    one = eng.insert(prefix, one, s, rng=k)
  for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(many.done_b), [False, False, True, True, False])
  np.testing.assert_array_equal(np.asarray(many.pos_b), [9, 5, 0, 0, 9])
  np.testing.assert_array_equal(np.asarray(many.budget_b), [7, 7, 0, 0, 7])
  # and they decode the same tokens
  _, r_many = eng.generate(params, many)
  _, r_one = eng.generate(params, one)
  np.testing.assert_array_equal(np.asarray(r_many.data), np.asarray(r_one.data))


def test_prefill_batch_and_insert_many_errors(model):
  config, params = model
  eng = _engine(model)
  tokens = np.stack([_padded([1, 5]), _padded([1])])
  with pytest.raises(ValueError, match="true_lengths_n"):
    eng.prefill_batch(params=params, padded_tokens_nt=tokens, true_lengths_n=[2, 0])
  with pytest.raises(ValueError, match="true_lengths_n"):
    eng.prefill_batch(params=params, padded_tokens_nt=tokens, true_lengths_n=[17, 1])
  with pytest.raises(ValueError, match="max_prefill_length"):
    eng.prefill_batch(params=params, padded_tokens_nt=np.zeros((1, 32), np.int32),
                      true_lengths_n=[1])
  with pytest.raises(ValueError, match=r"\[n >= 1, t\]"):
    eng.prefill_batch(params=params, padded_tokens_nt=tokens[0], true_lengths_n=[2])
  batch = eng.prefill_batch(params=params, padded_tokens_nt=tokens, true_lengths_n=[2, 1])
  keys = np.zeros((2, 2), np.uint32)
  with pytest.raises(ValueError, match="distinct"):
    eng.insert_many(batch, eng.init_decode_state(), [0, 1], [1, 1], keys)
  with pytest.raises(ValueError, match="rows must be"):
    eng.insert_many(batch, eng.init_decode_state(), [0, 2], [0, 1], keys)
  with pytest.raises(ValueError, match="rows must be"):
    eng.insert_many(batch, eng.init_decode_state(), [0, 1], [0, 3], keys)
  with pytest.raises(ValueError, match="grow_cache"):
    eng.insert_many(batch, eng.init_decode_state(cache_length=8), [0], [0], keys[:1])
