"""Sampling throughput (new tokens/s): our ``Sampler`` vs transformers' ``generate``, side by side
on the same tiny random Llama on CPU (batch 32, 128 new tokens by default).

  python -m selfreward_jax.sampling.bench_throughput [--batch 32 --new 128 --prompt 16]

Both sides run the same weights in float32, the same prompts (equal lengths, so transformers
needs no padding), no stop token (every sequence produces exactly ``--new`` tokens), after one
warm-up call (jit compilation / torch first-call costs excluded). A machine shared with other jobs
is noisy: compare the two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import time


def _hf_model(vocab, dim, layers, heads, kv_heads, ffn, max_pos):
  import torch
  import transformers
  cfg = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=dim, intermediate_size=ffn, num_hidden_layers=layers,
      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
      rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
      pad_token_id=0)
  torch.manual_seed(0)
  return transformers.LlamaForCausalLM(cfg).eval()


def _to_params(model):
  """HF Llama -> (LlamaConfig, params), the documented weight mapping."""
  import jax.numpy as jnp
  import numpy as np
  from selfreward_jax.model.llama import LlamaConfig
  hc = model.config
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  l, d, n, k = hc.num_hidden_layers, hc.hidden_size, hc.num_attention_heads, hc.num_key_value_heads
  h = d // n
  st = lambda name: np.stack([sd[f"model.layers.{i}.{name}.weight"] for i in range(l)])
  t = lambda w: w.transpose(0, 2, 1)
  params = {
      "embed": sd["model.embed_tokens.weight"], "final_norm": sd["model.norm.weight"],
      "lm_head": sd["lm_head.weight"].T,
      "layers": {
          "attn_norm": st("input_layernorm"), "mlp_norm": st("post_attention_layernorm"),
          "wq": t(st("self_attn.q_proj")).reshape(l, d, n, h),
          "wk": t(st("self_attn.k_proj")).reshape(l, d, k, h),
          "wv": t(st("self_attn.v_proj")).reshape(l, d, k, h),
          "wo": t(st("self_attn.o_proj")).reshape(l, n, h, d),
          "w_gate": t(st("mlp.gate_proj")), "w_up": t(st("mlp.up_proj")),
          "w_down": t(st("mlp.down_proj")),
      },
  }
  config = LlamaConfig(vocab_size=hc.vocab_size, dim=d, n_layers=l, n_heads=n, n_kv_heads=k,
                       ffn_dim=hc.intermediate_size, norm_eps=hc.rms_norm_eps,
                       max_seq_len=hc.max_position_embeddings, compute_dtype="float32")
  import jax
  return config, jax.tree.map(jnp.asarray, params)


def _time(fn, repeats):
  fn()  # warm-up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--prompt", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--steps_per_sync", type=int, nargs="+", default=[16, 1])
  ap.add_argument("--torch_threads", type=int, default=0, help="0 = torch's default")
  args = ap.parse_args()

  import numpy as np
  import torch
  from selfreward_jax.sampling.sampler import Sampler
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  model = _hf_model(vocab=512, dim=64, layers=2, heads=4, kv_heads=2, ffn=176, max_pos=512)
  config, params = _to_params(model)
  rng = np.random.default_rng(0)
  prompts = [[1] + rng.integers(3, 512, args.prompt - 1).tolist() for _ in range(args.batch)]
  total = args.batch * args.new
  modes = {"greedy": dict(temperature=0.0), "T=0.7 top-p 0.9": dict(temperature=0.7, top_p=0.9)}
  print(f"batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, tiny Llama "
        f"(V=512 D=64 L=2 N=4 K=2) f32, torch threads {torch.get_num_threads()}")
  for name, kw in modes.items():
    for sps in args.steps_per_sync:
      sampler = Sampler(config, params, max_concurrent=args.batch, max_prefill_length=32,
                        max_decode_length=args.prompt + args.new + 16, steps_per_sync=sps)
      run = lambda: sampler.generate(prompts, max_new_tokens=args.new, **kw)
      secs = _time(run, args.repeats)
      assert sampler.stats.new_tokens == total, sampler.stats
      print(f"  {name:16s} selfreward_jax Sampler (steps_per_sync={sps:3d}): "
            f"{total / secs:9.0f} tok/s  ({secs:.2f}s, {sampler.stats.host_syncs} syncs)")
    ids = torch.tensor(prompts)
    hf_kw = dict(do_sample=False) if kw["temperature"] == 0 else dict(
        do_sample=True, temperature=0.7, top_p=0.9, top_k=0)

    def hf_run():
      with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                             min_new_tokens=args.new, pad_token_id=0, **hf_kw)
      assert out.shape == (args.batch, args.prompt + args.new)

    secs = _time(hf_run, args.repeats)
    print(f"  {name:16s} transformers generate:                 {total / secs:9.0f} tok/s  "
          f"({secs:.2f}s)")


if __name__ == "__main__":
  main()
