"""The Llama model against transformers' LlamaForCausalLM, and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import hf_to_params, make_hf_llama
from selfreward_jax.model import llama
from selfreward_jax.model.llama import LlamaConfig


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


@pytest.mark.parametrize("kw", [
    dict(heads=4, kv_heads=4),                       # MHA
    dict(heads=4, kv_heads=2, theta=500.0),           # GQA + non-default rope theta
    dict(heads=8, kv_heads=1, dim=64, tie=True),      # MQA + tied embeddings
])
def test_logits_match_transformers(kw):
  model = make_hf_llama(**kw)
  cfg, params = hf_to_params(model)
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (3, 21))
  ref = _hf_logits(model, tokens)
  out = np.asarray(llama.forward(params, jnp.asarray(tokens), cfg))
  assert out.dtype == np.float32 and out.shape == (3, 21, cfg.vocab_size)
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_padding_mask_matches_transformers():
  """Right-padded rows: logits of real tokens equal HF's with its attention mask."""
  model = make_hf_llama()
  cfg, params = hf_to_params(model)
  tokens = np.random.RandomState(1).randint(3, cfg.vocab_size, (2, 12))
  mask = np.ones_like(tokens)
  mask[1, 7:] = 0
  with torch.no_grad():
    ref = model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  out = np.asarray(llama.forward(params, jnp.asarray(tokens), cfg, attention_mask_bt=jnp.asarray(mask)))
  np.testing.assert_allclose(out[0], ref[0], atol=1e-5)
  np.testing.assert_allclose(out[1, :7], ref[1, :7], atol=1e-5)


def test_packed_segments_equal_separate_sequences():
  cfg = LlamaConfig.tiny(vocab_size=64)
  params = llama.init_params(cfg, jax.random.key(0))
  rs = np.random.RandomState(0)
  a, b = rs.randint(0, 64, 5), rs.randint(0, 64, 7)
  packed = np.concatenate([a, b])[None]
  seg = np.array([[1] * 5 + [2] * 7])
  pos = np.array([list(range(5)) + list(range(7))])
  out = llama.forward(params, jnp.asarray(packed), cfg, segment_ids_bt=jnp.asarray(seg),
                      positions_bt=jnp.asarray(pos))
  ref_a = llama.forward(params, jnp.asarray(a[None]), cfg)
  ref_b = llama.forward(params, jnp.asarray(b[None]), cfg)
  np.testing.assert_allclose(out[0, :5], ref_a[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:], ref_b[0], atol=1e-5)


@pytest.mark.parametrize("per_layer_cache,unstacked", [(False, False), (True, False),
                                                       (True, True), (False, True)])
def test_prefill_then_decode_equals_full_forward(per_layer_cache, unstacked):
  """Stacked cache under the layer scan; per-layer cache and/or per-layer params (the layers
  unrolled): the same logits as the full forward of transformers-converted weights."""
  model = make_hf_llama(heads=4, kv_heads=2)
  cfg, params = hf_to_params(model)
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, cfg.vocab_size, (2, 16)))
  full = np.asarray(llama.forward(params, tokens, cfg))
  if unstacked:
    params = llama.unstack_layers(params)
    np.testing.assert_allclose(np.asarray(llama.forward(params, tokens, cfg)), full, atol=1e-5)
  cache = llama.init_cache(cfg, batch=2, max_len=32, per_layer=per_layer_cache)
  assert cache.per_layer == per_layer_cache and cache.length == 32
  logits, cache = llama.forward(params, tokens[:, :9], cfg, cache=cache)
  steps = [np.asarray(logits)]
  for t in range(9, 16):
    logits, cache = llama.forward(params, tokens[:, t:t + 1], cfg, cache=cache,
                                  positions_bt=jnp.full((2, 1), t, jnp.int32))
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_decode_rows_at_different_positions():
  """Each row of a cache can sit at its own position (continuous batching)."""
  cfg = LlamaConfig.tiny(vocab_size=64)
  params = llama.init_params(cfg, jax.random.key(1))
  rs = np.random.RandomState(3)
  seqs = [rs.randint(0, 64, 6), rs.randint(0, 64, 10)]
  cache = llama.init_cache(cfg, batch=2, max_len=16)
  for b, s in enumerate(seqs):  # prefill each row separately, like inserting into slots
    one = llama.init_cache(cfg, batch=1, max_len=16)
    _, one = llama.forward(params, jnp.asarray(s[None, :-1]), cfg, cache=one)
    cache = llama.KVCache(cache.k_lbksh.at[:, b].set(one.k_lbksh[:, 0]),
                          cache.v_lbksh.at[:, b].set(one.v_lbksh[:, 0]))
  last = jnp.asarray([[seqs[0][-1]], [seqs[1][-1]]])
  pos = jnp.asarray([[5], [9]])
  step, _ = llama.forward(params, last, cfg, cache=cache, positions_bt=pos)
  for b, s in enumerate(seqs):
    ref = llama.forward(params, jnp.asarray(s[None]), cfg)[0, -1]
    np.testing.assert_allclose(step[b, 0], ref, atol=1e-5)


def test_bf16_compute_close_to_f32_and_logits_f32():
  model = make_hf_llama()
  cfg, params = hf_to_params(model)
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, cfg.vocab_size, (2, 16)))
  ref = np.asarray(llama.forward(params, tokens, cfg))
  out = llama.forward(params, tokens, cfg.replace(compute_dtype="bfloat16"))
  assert out.dtype == jnp.float32
  err = np.abs(np.asarray(out) - ref).max()
  assert err < 0.05 * np.abs(ref).max(), err


def test_bf16_single_row_equals_its_row_in_a_batch():
  """One bf16 row (a one-slot decode step, a prefill's last-token logits) goes through the
  two-row matmul path: the same logits as that row decoded next to another, and close to f32."""
  model = make_hf_llama()
  cfg, params = hf_to_params(model)
  bf = cfg.replace(compute_dtype="bfloat16")
  tokens = jnp.asarray(np.random.RandomState(5).randint(0, cfg.vocab_size, (2, 9)))
  outs = {}
  for b in (1, 2):
    cache = llama.init_cache(bf, batch=b, max_len=16, dtype=jnp.float32)
    _, cache = llama.forward(params, tokens[:b, :8], bf, cache=cache)
    step, _ = llama.forward(params, tokens[:b, 8:], bf, cache=cache,
                            positions_bt=jnp.full((b, 1), 8, jnp.int32))
    outs[b] = np.asarray(step[0, 0])
  last = llama.forward(params, tokens[:1, :8], bf, logits_at_b=jnp.asarray([7]))
  np.testing.assert_allclose(outs[1], outs[2], atol=1e-5)
  ref = np.asarray(llama.forward(params, tokens[:1], cfg))[0]
  assert np.abs(outs[1] - ref[8]).max() < 0.05 * np.abs(ref[8]).max()
  assert np.abs(np.asarray(last)[0, 0] - ref[7]).max() < 0.05 * np.abs(ref[7]).max()


def test_bf16_matmuls_accumulate_in_f32():
  """The lowered bf16 model requests f32 results from every dot (no bf16 accumulation)."""
  cfg = LlamaConfig.tiny(compute_dtype="bfloat16")
  params = llama.init_params(cfg, jax.random.key(0))
  hlo = jax.jit(llama.forward, static_argnums=2).lower(params, jnp.zeros((1, 8), jnp.int32), cfg).as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line]
  assert dots, "no dot_general found"
  assert all("-> tensor<" in d and "xf32>" in d.split("->")[-1] for d in dots), dots[:3]


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_gives_same_gradients(remat):
  cfg = LlamaConfig.tiny(vocab_size=64)
  params = llama.init_params(cfg, jax.random.key(0))
  tokens = jnp.asarray(np.random.RandomState(5).randint(0, 64, (2, 8)))
  loss = lambda p, c: jnp.mean(jax.nn.log_softmax(llama.forward(p, tokens, c))[..., 0])
  g0 = jax.grad(loss)(params, cfg)
  g1 = jax.grad(loss)(params, cfg.replace(remat=remat))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_dropout_only_with_rng_and_deterministic_per_key():
  cfg = LlamaConfig.tiny(vocab_size=64, dropout_rate=0.1)
  params = llama.init_params(cfg, jax.random.key(0))
  tokens = jnp.asarray(np.random.RandomState(6).randint(0, 64, (2, 8)))
  plain = llama.forward(params, tokens, cfg)
  np.testing.assert_array_equal(plain, llama.forward(params, tokens, cfg.replace(dropout_rate=0.0)))
  d1 = llama.forward(params, tokens, cfg, dropout_rng=jax.random.key(1))
  d1b = llama.forward(params, tokens, cfg, dropout_rng=jax.random.key(1))
  d2 = llama.forward(params, tokens, cfg, dropout_rng=jax.random.key(2))
  np.testing.assert_array_equal(d1, d1b)
  assert np.abs(np.asarray(d1 - plain)).max() > 1e-4
  assert np.abs(np.asarray(d1 - d2)).max() > 1e-4


def test_layers_are_scanned():
  """Depth does not add ops to the program: 2 and 12 layers lower to the same op count."""
  def n_ops(layers):
    cfg = LlamaConfig.tiny(n_layers=layers)
    shapes = jax.eval_shape(lambda k: llama.init_params(cfg, k), jax.random.key(0))
    return len(jax.jit(llama.forward, static_argnums=2).lower(
        shapes, jax.ShapeDtypeStruct((1, 8), jnp.int32), cfg).as_text().splitlines())
  assert n_ops(2) == n_ops(12)


def test_presets_and_param_counts():
  assert abs(LlamaConfig.llama2_7b().num_params() - 6.74e9) / 6.74e9 < 0.01
  assert abs(LlamaConfig.llama2_13b().num_params() - 13.0e9) / 13.0e9 < 0.01
  c70 = LlamaConfig.llama2_70b()
  assert c70.n_kv_heads == 8 and abs(c70.num_params() - 68.98e9) / 68.98e9 < 0.01
  shapes = jax.eval_shape(lambda k: llama.init_params(c70, k), jax.random.key(0))  # allocates nothing
  n = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert n == c70.num_params()
  axes = llama.param_axes(c70)
  jax.tree.map(lambda ax, s: None if len(ax) == len(s.shape) else pytest.fail(f"{ax} vs {s.shape}"),
               axes, shapes, is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("field,value,match", [
    ("n_kv_heads", 3, "must divide n_heads"),
    ("compute_dtype", "float8", "allowed"),
    ("remat", "sometimes", "allowed"),
    ("dropout_rate", 1.5, r"\[0, 1\)"),
    ("dim", 0, "positive"),
])
def test_config_errors_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=f"LlamaConfig.{field}.*{match}"):
    LlamaConfig.tiny(**{field: value})


def test_remat_policies_save_what_they_say(capsys):
  """"dots" keeps every matmul output, "dots_no_batch" only the weight matmuls, "full" none."""
  cfg = LlamaConfig.tiny(vocab_size=64, n_layers=1, compute_dtype="bfloat16")
  params = llama.init_params(cfg, jax.random.key(0))
  tokens = jnp.zeros((2, 8), jnp.int32)

  def n_saved(remat):
    c = cfg.replace(remat=remat)
    layer = lambda x, lp: llama._remat(llama._layer, c.remat)(c, x, lp, jnp.zeros((2, 8), jnp.int32),
                                                              jnp.ones((2, 8, 8), bool), None, None, None)[0]
    lp = jax.tree.map(lambda w: w[0], params["layers"])
    x = jnp.zeros((2, 8, cfg.dim), cfg.cdtype)
    from jax.ad_checkpoint import print_saved_residuals
    print_saved_residuals(lambda x, lp: layer(x, lp).astype(jnp.float32).sum(), x, lp)
    out = capsys.readouterr().out
    return sum("named 'proj_dot'" in l for l in out.splitlines()), \
        sum("named 'attn_dot'" in l for l in out.splitlines())

  assert n_saved("full") == (0, 0)
  proj, attn = n_saved("dots")
  assert proj >= 6 and attn == 2  # (the w_down output is not needed by the backward)
  assert n_saved("dots_no_batch") == (proj, 0)
