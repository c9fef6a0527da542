"""Shared test fixtures: tiny HF reference models and a multi-device subprocess runner."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long tests, opt-in with `-m slow`")


def make_hf_llama(*, vocab=128, dim=64, ffn=112, layers=2, heads=4, kv_heads=2, theta=10000.0,
                  eps=1e-5, tie=False, max_pos=256, seed=0):
  """A tiny random ``transformers.LlamaForCausalLM`` (fp32, eval mode)."""
  import torch
  import transformers
  cfg = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
      rope_parameters={"rope_type": "default", "rope_theta": theta}, rms_norm_eps=eps,
      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # non-trivial norm weights so a wrong norm cannot pass
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  return model


def hf_to_params(model):
  """Test-side reference conversion of an HF Llama to (LlamaConfig, params), written
  independently of ``selfreward_jax.checkpoint.hf``."""
  import jax.numpy as jnp
  from selfreward_jax.model.llama import LlamaConfig
  hc = model.config
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  n_l, d, n, k = hc.num_hidden_layers, hc.hidden_size, hc.num_attention_heads, hc.num_key_value_heads
  h = d // n
  cfg = LlamaConfig(vocab_size=hc.vocab_size, dim=d, n_layers=n_l, n_heads=n, n_kv_heads=k,
                    ffn_dim=hc.intermediate_size, norm_eps=hc.rms_norm_eps,
                    rope_theta=hc.rope_parameters["rope_theta"], max_seq_len=hc.max_position_embeddings,
                    tie_embeddings=hc.tie_word_embeddings, compute_dtype="float32")

  def st(name):
    return np.stack([sd[f"model.layers.{i}.{name}"] for i in range(n_l)])

  def lin(name, heads=None, out_heads=None):
    w = st(name).transpose(0, 2, 1)  # [L, in, out]
    if heads:
      return w.reshape(n_l, d, heads, h)
    if out_heads:
      return w.reshape(n_l, out_heads, h, d)
    return w

  params = {
      "embed": sd["model.embed_tokens.weight"],
      "final_norm": sd["model.norm.weight"],
      "layers": {
          "attn_norm": st("input_layernorm.weight"), "mlp_norm": st("post_attention_layernorm.weight"),
          "wq": lin("self_attn.q_proj.weight", heads=n), "wk": lin("self_attn.k_proj.weight", heads=k),
          "wv": lin("self_attn.v_proj.weight", heads=k), "wo": lin("self_attn.o_proj.weight", out_heads=n),
          "w_gate": lin("mlp.gate_proj.weight"), "w_up": lin("mlp.up_proj.weight"),
          "w_down": lin("mlp.down_proj.weight"),
      },
  }
  if not hc.tie_word_embeddings:
    params["lm_head"] = sd["lm_head.weight"].T
  import jax
  return cfg, jax.tree.map(jnp.asarray, params)


def run_multidevice(code: str, n_devices: int = 8, timeout: int = 600) -> str:
  """Runs ``code`` in a fresh Python with ``n_devices`` fake CPU devices; returns its stdout."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}")
  return proc.stdout


@pytest.fixture
def hf_llama():
  return make_hf_llama
