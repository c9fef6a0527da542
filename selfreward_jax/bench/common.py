"""Shared pieces of ``python -m selfreward_jax.benchmark``: the one model configuration, the data
both sides see, weight conversion from transformers' Llama, timing and the machine description.

Shapes: b rows, t sequence length, v vocab, d model dim, l layers.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """Sizes of every measurement (flags of the CLI; the smoke test passes toy values).

  The model is Llama 2 shaped (MHA, SwiGLU, untied head). ``ffn`` 0 means Llama's rule:
  ``8 d / 3`` rounded up to a multiple of 256.
  """

  vocab: int = 32000
  dim: int = 512
  layers: int = 8
  heads: int = 8
  ffn: int = 0
  seq: int = 256
  batch: int = 8            # SFT rows; DPO uses batch // 2 pairs (the same rows count)
  steps: int = 3            # timed steps after one warm-up step (medians are reported)
  prompts: int = 32         # sampling
  sample_repeats: int = 3   # timed sampling runs per side after a warm-up (the median is reported)
  prompt_len: int = 32
  new_tokens: int = 128
  growth_seqs: Sequence[int] = (128, 256, 512, 1024)
  growth_rows: int = 2
  growth_prompts: Sequence[int] = (8, 16, 32, 64)
  growth_new_tokens: int = 32
  growth_depths: Sequence[int] = (2, 4, 8, 16)
  peak_size: int = 2048
  torch_threads: int = 0    # 0 = torch's default

  @property
  def ffn_dim(self) -> int:
    if self.ffn:
      return self.ffn
    return 256 * -(-(8 * self.dim // 3) // 256)

  def llama(self, **kw):
    """Our ``LlamaConfig`` of these sizes (float32 params, ``kw`` overrides)."""
    from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
    base = dict(vocab_size=self.vocab, dim=self.dim, n_layers=self.layers, n_heads=self.heads,
                n_kv_heads=self.heads, ffn_dim=self.ffn_dim, norm_eps=1e-6,
                max_seq_len=max(self.seq, self.prompt_len + self.new_tokens,
                                max(self.growth_seqs)),
                compute_dtype="float32")
    return llama.LlamaConfig(**{**base, **kw})


# ---- timing ---------------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Dict[str, Any]:
  """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times; seconds of each timed run and
  their median. ``fn`` must block until its work is done."""
  first = None
  for i in range(warmup):
    start = time.perf_counter()
    fn()
    if i == 0:
      first = time.perf_counter() - start
  secs = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    secs.append(time.perf_counter() - start)
  return {"median_s": statistics.median(secs), "runs_s": [round(s, 4) for s in secs],
          "first_s": first}


def matmul_peak(size: int, repeats: int = 5) -> Dict[str, float]:
  """FLOP/s of ``jnp.dot`` on [size, size] matrices: f32, and bf16 inputs accumulating in f32
  (``preferred_element_type=float32``), the two regimes the model runs in."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flops = 2.0 * size ** 3
  a_f32 = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  a_bf16 = a_f32.astype(jnp.bfloat16)
  f32 = jax.jit(lambda a: jnp.dot(a, a))
  bf16 = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  out = {}
  for name, fn, a in (("f32", f32, a_f32), ("bf16_f32acc", bf16, a_bf16)):
    t = timed(lambda fn=fn, a=a: fn(a).block_until_ready(), repeats)
    out[f"{name}_flops"] = flops / t["median_s"]
  return out


# ---- data -----------------------------------------------------------------------------------------

def sft_tokens(cfg: BenchConfig, rows: Optional[int] = None, seq: Optional[int] = None,
               seed: int = 0) -> np.ndarray:
  """int32 [b, t] random ids in [3, vocab) with BOS (1) first: the SFT batch of every side."""
  rows, seq = rows or cfg.batch, seq or cfg.seq
  tokens_bt = np.random.default_rng(seed).integers(3, cfg.vocab, (rows, seq)).astype(np.int32)
  tokens_bt[:, 0] = 1
  return tokens_bt


def dpo_pairs(cfg: BenchConfig, seed: int = 1) -> Dict[str, np.ndarray]:
  """Preference pairs filling ``seq`` exactly: a shared prompt of ``seq // 4`` tokens, chosen and
  rejected responses of the rest (no padding, so no side pays for padding differently).

  Returns int32 ``prompt_bt`` [p, seq/4], ``chosen_bt`` / ``rejected_bt`` [p, 3 seq/4] with
  p = batch // 2 pairs (responses end with EOS = 2).
  """
  p = max(cfg.batch // 2, 1)
  rng = np.random.default_rng(seed)
  t_prompt = cfg.seq // 4
  prompt_bt = rng.integers(3, cfg.vocab, (p, t_prompt)).astype(np.int32)
  prompt_bt[:, 0] = 1
  chosen_bt = rng.integers(3, cfg.vocab, (p, cfg.seq - t_prompt)).astype(np.int32)
  rejected_bt = rng.integers(3, cfg.vocab, (p, cfg.seq - t_prompt)).astype(np.int32)
  chosen_bt[:, -1] = 2
  rejected_bt[:, -1] = 2
  return {"prompt_bt": prompt_bt, "chosen_bt": chosen_bt, "rejected_bt": rejected_bt}


def sampling_prompts(cfg: BenchConfig, n: Optional[int] = None, seed: int = 2) -> List[List[int]]:
  """``n`` (default ``cfg.prompts``) prompts of ``prompt_len`` ids, BOS first, all equal length
  (so transformers' ``generate`` needs no padding)."""
  n = n or cfg.prompts
  ids = np.random.default_rng(seed).integers(3, cfg.vocab, (n, cfg.prompt_len))
  ids[:, 0] = 1
  return ids.tolist()


# ---- the shared weights ---------------------------------------------------------------------------

def hf_model(cfg: BenchConfig, layers: Optional[int] = None):
  """transformers ``LlamaForCausalLM`` of the benchmark's sizes (torch seed 0, float32, eval mode)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hc = transformers.LlamaConfig(
      vocab_size=cfg.vocab, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
      num_hidden_layers=layers or cfg.layers, num_attention_heads=cfg.heads,
      num_key_value_heads=cfg.heads, max_position_embeddings=cfg.llama().max_seq_len,
      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
      pad_token_id=0, attention_dropout=0.0)
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(hc).eval()


def params_from_hf(model) -> Dict[str, Any]:
  """transformers Llama weights -> our param pytree (numpy float32), the documented mapping."""
  hc = model.config
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  l, d = hc.num_hidden_layers, hc.hidden_size
  n, k = hc.num_attention_heads, hc.num_key_value_heads
  h = d // n
  stack = lambda name: np.stack([sd[f"model.layers.{i}.{name}.weight"] for i in range(l)])
  t = lambda w_loi: w_loi.transpose(0, 2, 1)
  return {
      "embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"],
      "lm_head": sd["lm_head.weight"].T.copy(),
      "layers": {
          "attn_norm": stack("input_layernorm"), "mlp_norm": stack("post_attention_layernorm"),
          "wq": t(stack("self_attn.q_proj")).reshape(l, d, n, h),
          "wk": t(stack("self_attn.k_proj")).reshape(l, d, k, h),
          "wv": t(stack("self_attn.v_proj")).reshape(l, d, k, h),
          "wo": t(stack("self_attn.o_proj")).reshape(l, n, h, d),
          "w_gate": t(stack("mlp.gate_proj")), "w_up": t(stack("mlp.up_proj")),
          "w_down": t(stack("mlp.down_proj")),
      },
  }


# ---- machine --------------------------------------------------------------------------------------

def machine() -> Dict[str, Any]:
  """nproc, CPU model, load average and library versions (the table's header)."""
  cpu = platform.processor() or "?"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  info: Dict[str, Any] = {"nproc": os.cpu_count(), "cpu": cpu,
                          "loadavg": [round(x, 2) for x in os.getloadavg()],
                          "python": platform.python_version()}
  import jax  # pylint: disable=g-import-not-at-top
  info["jax"] = jax.__version__
  info["jax_backend"] = jax.default_backend()
  for name in ("torch", "transformers", "trl"):
    try:
      info[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      info[name] = None
  return info


def skipped(reason: str) -> Dict[str, Any]:
  """The record of a peer that did not run (kept in the JSON with its reason)."""
  return {"skipped": reason}
