"""Tunix's column of the benchmark, run as a subprocess with Tunix's own virtualenv's python.

  /path/to/tunix-venv/bin/python tunix_runner.py SPEC.json WEIGHTS.npz OUT.json

Self-contained (imports nothing from ``selfreward_jax``, which that virtualenv does not have).
``SPEC.json`` gives the sizes, steps and data; ``WEIGHTS.npz`` the same float32 weights as the
other columns, in our layout (which is Tunix's Llama3 layout: ``wq`` [l, d, n, h] etc.).

What is timed (after one untimed call of the same shapes):

* DPO: Tunix ``DPOTrainer``'s jitted train step (``nnx.value_and_grad`` of ``dpo_loss_fn`` and
  ``nnx.Optimizer.update`` with optax AdamW + clipping) on the prepared ``TrainExample``. The
  trainer gets ``ref_model=None``: it then does no reference forward and leaves the reference term
  out of the loss, which costs the same as precomputed reference log-probs (a subtraction).
  ``_prepare_inputs`` (padding/positions/mask building) is done once, untimed.
* Sampling: one call of ``tunix.generate.sampler.Sampler`` on P prompts (ids passed as text
  through a word-per-id tokenizer), ``max_generation_steps=n``, no reachable EOS.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback


def _timed(fn, repeats):
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  secs = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    secs.append(time.perf_counter() - start)
  return {"median_s": statistics.median(secs), "runs_s": [round(s, 4) for s in secs],
          "first_s": first}


class IdTokenizer:
  """Text "5 17 300" <-> ids [5, 17, 300] (Tunix's TokenizerAdapter accepts any object with these
  methods)."""

  def encode(self, text, **kw):
    return [int(x) for x in text.split()]

  def decode(self, ids, **kw):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return 1

  def eos_id(self):
    return 2

  def pad_id(self):
    return 0


def build_model(spec, weights):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tunix.models.llama3 import model as llama3  # pylint: disable=g-import-not-at-top
  config = llama3.ModelConfig(
      num_layers=spec["layers"], vocab_size=spec["vocab"], embed_dim=spec["dim"],
      hidden_dim=spec["ffn"], num_heads=spec["heads"], head_dim=spec["dim"] // spec["heads"],
      num_kv_heads=spec["heads"], rope_theta=10000, norm_eps=1e-6)
  model = llama3.Llama3(config, rngs=nnx.Rngs(0))
  w = {k: jnp.asarray(weights[k]) for k in weights.files}
  model.embedder.input_embedding.value = w["embed"]
  model.final_norm.w.value = w["final_norm"]
  model.lm_head.w.value = w["lm_head"]
  for i, layer in enumerate(model.layers):
    layer.input_layernorm.w.value = w["attn_norm"][i]
    layer.post_attention_layernorm.w.value = w["mlp_norm"][i]
    layer.attn.q_proj.w.value = w["wq"][i]
    layer.attn.k_proj.w.value = w["wk"][i]
    layer.attn.v_proj.w.value = w["wv"][i]
    layer.attn.o_proj.w.value = w["wo"][i]
    layer.mlp.gate_proj.kernel.value = w["w_gate"][i]
    layer.mlp.up_proj.kernel.value = w["w_up"][i]
    layer.mlp.down_proj.kernel.value = w["w_down"][i]
  return model


def dpo(spec, weights):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from tunix.sft.dpo import dpo_trainer  # pylint: disable=g-import-not-at-top
  model = build_model(spec, weights)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, weight_decay=0.0))
  config = dpo_trainer.DPOTrainingConfig(eval_every_n_steps=10 ** 9, max_steps=10 ** 9, beta=0.1)
  trainer = dpo_trainer.DPOTrainer(model=model, ref_model=None, optimizer=opt,
                                   training_config=config)
  pairs = spec["pairs"]
  prompt = np.asarray(pairs["prompt_bt"], np.int32)
  chosen = np.asarray(pairs["chosen_bt"], np.int32)
  rejected = np.asarray(pairs["rejected_bt"], np.int32)
  example = trainer._prepare_inputs(dpo_trainer.TrainingInput(  # pylint: disable=protected-access
      prompt_ids=prompt, prompt_mask=np.ones_like(prompt), chosen_ids=chosen,
      chosen_mask=np.ones_like(chosen), rejected_ids=rejected,
      rejected_mask=np.ones_like(rejected)))
  train_step, _ = trainer.jit_train_and_eval_step()

  def one():
    loss, _, grad_norm = train_step(example)
    jax.block_until_ready((loss, grad_norm))

  t = _timed(one, spec["steps"])
  t["pairs_per_s"] = prompt.shape[0] / t["median_s"]
  t["timed"] = ("Tunix DPOTrainer jitted train step (value_and_grad of dpo_loss_fn + "
                "nnx.Optimizer.update), ref_model=None (no reference pass)")
  return t


def sampling(spec, weights):
  from tunix.generate import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  model = build_model(spec, weights)
  prompts = [" ".join(str(i) for i in p) for p in spec["prompts"]]
  n_new, t_prompt = spec["new_tokens"], len(spec["prompts"][0])
  cache = sampler_lib.CacheConfig(cache_size=t_prompt + n_new, num_layers=spec["layers"],
                                  num_kv_heads=spec["heads"],
                                  head_dim=spec["dim"] // spec["heads"])
  sampler = sampler_lib.Sampler(transformer=model, tokenizer=IdTokenizer(), cache_config=cache)
  out = {}
  for name, mode in (("greedy", {"temperature": 0.0}),
                     ("T=0.7 top-p 0.9", {"temperature": 0.7, "top_p": 0.9})):
    box = {}

    def one(mode=mode):
      res = sampler(prompts, max_generation_steps=n_new, max_prompt_length=t_prompt,
                    eos_tokens=[-1], seed=0, **mode)
      box["n"] = sum(len(t) for t in res.tokens)

    t = _timed(one, 1)
    t["new_tokens"] = box["n"]
    t["tokens_per_s"] = box["n"] / t["median_s"]
    out[name] = t
  return out


def main(argv):
  spec_path, weights_path, out_path = argv[1:4]
  import numpy as np  # pylint: disable=g-import-not-at-top
  with open(spec_path, encoding="utf-8") as f:
    spec = json.load(f)
  weights = np.load(weights_path)
  results = {}
  try:
    import tunix  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    results["versions"] = {"tunix": getattr(tunix, "__version__", None), "jax": jax.__version__}
  except Exception as e:  # pylint: disable=broad-except
    results["error"] = f"import tunix failed: {e!r}"
  for name, fn in (("dpo", dpo), ("sampling", sampling)):
    if "error" in results or name not in spec["parts"]:
      continue
    try:
      results[name] = fn(spec, weights)
    except Exception as e:  # pylint: disable=broad-except
      results[name] = {"skipped": f"Tunix {name} failed: {e!r}",
                       "traceback": traceback.format_exc()[-3000:]}
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv)
