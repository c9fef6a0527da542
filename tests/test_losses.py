"""Losses against independent references: the published DPO/IPO/RPO formulas in numpy (values and
gradients), and sequence log-probs against transformers' Llama and a brute-force numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit, log_expit, log_softmax

from selfreward_jax.model import llama
from selfreward_jax.train import losses

from test_train_support import FAST, init_params

# jitted once per shape (eagerly, every op of the forward would compile on its own)
seq_logps = jax.jit(losses.sequence_logps, static_argnums=1, compiler_options=FAST)


# ---- DPO family vs numpy ------------------------------------------------------------------------

def np_dpo(pw, pl, rw, rl, beta, eps=0.0, loss_type="sigmoid", nw=None, nl=None, alpha=0.0):
  """The formulas of PAPER.md, written independently of the implementation."""
  if loss_type == "sigmoid":
    z = beta * ((pw - rw) - (pl - rl))
    per = -(1 - eps) * log_expit(z) - eps * log_expit(-z)
  else:
    d = (pw - rw) / nw - (pl - rl) / nl
    per = (d - 1.0 / (2.0 * beta)) ** 2
  if alpha:
    per = per + alpha * (-pw / nw)
  return per.mean()


def _inputs(seed=0, b=16):
  rng = np.random.default_rng(seed)
  pw, pl, rw, rl = (rng.normal(-40, 8, b) for _ in range(4))
  nw, nl = rng.integers(5, 40, b).astype(np.float64), rng.integers(5, 40, b).astype(np.float64)
  return pw, pl, rw, rl, nw, nl


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_sigmoid_dpo_matches_formula(beta, eps):
  pw, pl, rw, rl, _, _ = _inputs()
  loss, m = losses.dpo_loss(pw, pl, rw, rl, beta=beta, label_smoothing=eps)
  np.testing.assert_allclose(float(loss), np_dpo(pw, pl, rw, rl, beta, eps), rtol=1e-5)
  cw, cl = beta * (pw - rw), beta * (pl - rl)
  np.testing.assert_allclose(float(m["chosen_reward"]), cw.mean(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["rejected_reward"]), cl.mean(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["reward_margin"]), (cw - cl).mean(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(m["reward_accuracy"]), (cw > cl).mean())
  assert 0 < float(m["reward_accuracy"]) < 1  # the inputs exercise both outcomes


def test_dpo_at_reference_is_log2():
  x = np.full(4, -12.0)
  loss, m = losses.dpo_loss(x, x, x, x, beta=0.1)
  np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)
  assert float(m["reward_accuracy"]) == 0.0  # ties are not correct orderings


def test_ipo_matches_formula_with_counts_and_averaged_inputs():
  pw, pl, rw, rl, nw, nl = _inputs(1)
  want = np_dpo(pw, pl, rw, rl, 0.1, loss_type="ipo", nw=nw, nl=nl)
  got, _ = losses.dpo_loss(pw, pl, rw, rl, beta=0.1, loss_type="ipo", chosen_counts=nw,
                           rejected_counts=nl)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # without counts the inputs are taken as already per-token averaged
  got_avg, _ = losses.dpo_loss(pw / nw, pl / nl, rw / nw, rl / nl, beta=0.1, loss_type="ipo")
  np.testing.assert_allclose(float(got_avg), want, rtol=1e-5)


def test_rpo_nll_term():
  pw, pl, rw, rl, nw, nl = _inputs(2)
  got, _ = losses.dpo_loss(pw, pl, rw, rl, beta=0.1, nll_alpha=0.7, chosen_counts=nw,
                           rejected_counts=nl)
  np.testing.assert_allclose(float(got), np_dpo(pw, pl, rw, rl, 0.1, nw=nw, nl=nl, alpha=0.7),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="chosen_counts"):
    losses.dpo_loss(pw, pl, rw, rl, nll_alpha=0.5)


def test_bad_arguments_are_refused():
  x = np.zeros(2)
  with pytest.raises(ValueError, match="loss_type"):
    losses.dpo_loss(x, x, x, x, loss_type="hinge2")
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.dpo_loss(x, x, x, x, loss_type="ipo", label_smoothing=0.1)
  with pytest.raises(ValueError, match="both"):
    losses.dpo_loss(x, x, x, x, loss_type="ipo", chosen_counts=x + 1)


def _grads(**kw):
  pw, pl, rw, rl, nw, nl = _inputs(3, b=8)
  f = lambda a, b: losses.dpo_loss(a, b, rw, rl, **kw)[0]
  gw, gl = jax.grad(f, argnums=(0, 1))(jnp.asarray(pw, jnp.float32), jnp.asarray(pl, jnp.float32))
  return np.asarray(gw), np.asarray(gl), (pw, pl, rw, rl, nw, nl)


def test_sigmoid_gradients_signs_and_values():
  beta = 0.1
  gw, gl, (pw, pl, rw, rl, _, _) = _grads(beta=beta)
  assert (gw < 0).all() and (gl > 0).all()  # raise chosen, lower rejected
  z = beta * ((pw - rw) - (pl - rl))
  np.testing.assert_allclose(gw, -beta * (1 - expit(z)) / len(z), rtol=1e-4)
  np.testing.assert_allclose(gl, beta * (1 - expit(z)) / len(z), rtol=1e-4)


def test_label_smoothing_gradient():
  beta, eps = 0.1, 0.1
  gw, _, (pw, pl, rw, rl, _, _) = _grads(beta=beta, label_smoothing=eps)
  z = beta * ((pw - rw) - (pl - rl))
  # d/dz [-(1-eps) log s(z) - eps log s(-z)] = s(z) - (1 - eps)
  np.testing.assert_allclose(gw, beta * (expit(z) - (1 - eps)) / len(z), rtol=1e-4, atol=1e-9)


def test_ipo_gradient_signs_below_target():
  pw, pl, rw, rl, nw, nl = _inputs(4, b=8)
  f = lambda a, b: losses.dpo_loss(a, b, rw, rl, beta=0.1, loss_type="ipo", chosen_counts=nw,
                                   rejected_counts=nl)[0]
  gw, gl = jax.grad(f, argnums=(0, 1))(jnp.asarray(pw, jnp.float32), jnp.asarray(pl, jnp.float32))
  d = (pw - rw) / nw - (pl - rl) / nl
  below = d < 5.0  # 1 / (2 beta)
  assert below.any()
  assert (np.asarray(gw)[below] < 0).all() and (np.asarray(gl)[below] > 0).all()
  np.testing.assert_allclose(gw, 2 * (d - 5.0) / nw / len(d), rtol=1e-4)


# ---- sequence log-probs -------------------------------------------------------------------------

def test_masked_sequence_logps_vs_bruteforce_numpy():
  rng = np.random.default_rng(0)
  b, t, v = 3, 7, 11
  logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
  tokens = rng.integers(0, v, (b, t))
  mask = rng.integers(0, 2, (b, t))
  mask[:, 0] = 1  # position 0 must be ignored whatever the mask says
  logps, counts = losses.masked_sequence_logps(jnp.asarray(logits), jnp.asarray(tokens),
                                               jnp.asarray(mask))
  want, want_n = np.zeros(b), np.zeros(b)
  for i in range(b):
    for j in range(1, t):
      if mask[i, j]:
        want[i] += log_softmax(logits[i, j - 1].astype(np.float64))[tokens[i, j]]
        want_n[i] += 1
  np.testing.assert_allclose(np.asarray(logps), want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(counts), want_n)


@pytest.fixture(scope="module")
def tiny():
  config = llama.LlamaConfig.tiny(vocab_size=97)
  return config, init_params(config, seed=1)


def _hf_model(config, params):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_config = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_dim,
      num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
      num_key_value_heads=config.n_kv_heads, rms_norm_eps=config.norm_eps,
      max_position_embeddings=config.max_seq_len, tie_word_embeddings=False,
      attention_bias=False, mlp_bias=False)
  model = transformers.LlamaForCausalLM(hf_config).eval()
  p = jax.tree.map(lambda x: torch.tensor(np.asarray(x, np.float32)), params)
  d = config.dim
  sd = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["final_norm"],
        "lm_head.weight": p["lm_head"].T}
  L = p["layers"]
  for i in range(config.n_layers):
    pre = f"model.layers.{i}."
    sd[pre + "self_attn.q_proj.weight"] = L["wq"][i].reshape(d, -1).T
    sd[pre + "self_attn.k_proj.weight"] = L["wk"][i].reshape(d, -1).T
    sd[pre + "self_attn.v_proj.weight"] = L["wv"][i].reshape(d, -1).T
    sd[pre + "self_attn.o_proj.weight"] = L["wo"][i].reshape(-1, d).T
    sd[pre + "mlp.gate_proj.weight"] = L["w_gate"][i].T
    sd[pre + "mlp.up_proj.weight"] = L["w_up"][i].T
    sd[pre + "mlp.down_proj.weight"] = L["w_down"][i].T
    sd[pre + "input_layernorm.weight"] = L["attn_norm"][i]
    sd[pre + "post_attention_layernorm.weight"] = L["mlp_norm"][i]
  missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in sd.items()},
                                              strict=False)
  assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
  return model


def test_sequence_logps_vs_transformers(tiny):
  torch = pytest.importorskip("torch")
  config, params = tiny
  rng = np.random.default_rng(5)
  lengths = [12, 7, 9]
  t = 16
  tokens = np.zeros((3, t), np.int64)
  mask = np.zeros((3, t), np.int64)
  attn = np.zeros((3, t), np.int64)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(3, config.vocab_size, n)
    attn[i, :n] = 1
    mask[i, n // 2:n] = 1  # the "response" half
  logps, counts = seq_logps(params, config, jnp.asarray(tokens), jnp.asarray(mask),
                            attention_mask_bt=jnp.asarray(attn))
  model = _hf_model(config, params)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(attn)).logits
    lp = torch.log_softmax(logits.double()[:, :-1], -1).gather(
        -1, torch.tensor(tokens)[:, 1:, None])[..., 0]
    want = (lp * torch.tensor(mask)[:, 1:]).sum(-1).numpy()
  np.testing.assert_allclose(np.asarray(logps), want, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(counts), mask[:, 1:].sum(-1))


def test_padding_and_packing_do_not_change_logps(tiny):
  config, params = tiny
  rng = np.random.default_rng(6)
  seqs = [rng.integers(3, config.vocab_size, n) for n in (9, 5, 6)]
  masks = [np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int32) for n in map(len, seqs)]
  alone = [seq_logps(params, config, jnp.asarray(s[None]), jnp.asarray(m[None]))[0][0]
           for s, m in zip(seqs, masks)]
  # one packed row of all three, padded to 24
  t = 24
  tok, msk, seg, pos = (np.zeros((1, t), np.int32) for _ in range(4))
  o = 0
  for k, (s, m) in enumerate(zip(seqs, masks), start=1):
    n = len(s)
    tok[0, o:o + n], msk[0, o:o + n], seg[0, o:o + n], pos[0, o:o + n] = s, m, k, np.arange(n)
    o += n
  packed, n_packed = seq_logps(params, config, jnp.asarray(tok), jnp.asarray(msk),
                               segment_ids_bt=jnp.asarray(seg), positions_bt=jnp.asarray(pos))
  np.testing.assert_allclose(float(packed[0]), float(sum(alone)), rtol=1e-5)
  assert float(n_packed[0]) == sum(m[1:].sum() for m in masks)


def test_sft_loss_is_mean_target_nll(tiny):
  config, params = tiny
  rng = np.random.default_rng(7)
  tokens = rng.integers(3, config.vocab_size, (2, 10))
  mask = np.zeros((2, 10), np.int32)
  mask[0, 4:] = 1
  mask[1, 8:] = 1
  loss, n = jax.jit(losses.sft_loss, static_argnums=1)(params, config, jnp.asarray(tokens),
                                                       jnp.asarray(mask))
  logits = np.asarray(jax.jit(llama.forward, static_argnums=2)(params, jnp.asarray(tokens), config),
                      np.float64)
  nll = [-log_softmax(logits[b, t - 1])[tokens[b, t]] for b in range(2) for t in range(1, 10)
         if mask[b, t]]
  assert float(n) == len(nll) == 8
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
