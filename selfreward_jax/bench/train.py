"""Training-step measurements: SFT (ours vs transformers + torch AdamW) and DPO (ours vs TRL's
``DPOTrainer``), growth of the step with the sequence length and of compile time with depth.

What is timed, per side (one warm-up step first, then ``cfg.steps`` steps, median reported):

* ours: one call of the jitted ``TrainStep`` (forward, backward, global-norm clipping, AdamW)
  on a device-resident batch, until its metrics are ready.
* transformers SFT: ``loss = model(input_ids, labels=input_ids).loss; loss.backward();
  clip_grad_norm_(1.0); AdamW.step(); zero_grad()``.
* TRL DPO: whole optimizer steps of ``DPOTrainer.train()`` (data collation, forward, backward,
  clipping, AdamW, scheduler), from ``on_step_begin`` to ``on_step_end`` of a callback; the
  reference log-probs are precomputed by TRL before training (``precompute_ref_log_probs``) and
  that pass, the dataset tokenisation and the first step are excluded.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np

from selfreward_jax.bench import common


def _our_state(model, mesh, steps: int):
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import optim, state as st  # pylint: disable=g-import-not-at-top
  tx, schedule = optim.make_optimizer(optim.OptimConfig(), steps + 2)
  sh = st.state_shardings(model, tx, mesh)
  return tx, schedule, sh


def _run_our_step(model, params, objective, batch: Dict[str, np.ndarray], steps: int):
  """Times our jitted step; returns the timing dict plus the compile (first call) seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import state as st  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.step import TrainStep, put_batch  # pylint: disable=g-import-not-at-top
  mesh = shd.make_mesh(shd.MeshConfig())
  tx, schedule, sh = _our_state(model, mesh, steps)
  state = st.init_train_state(jax.tree.map(np.asarray, params), tx, sh, 0)
  step = TrainStep(objective, tx, schedule, sh, mesh)
  batch = put_batch(batch, mesh)
  box = {"state": state}

  def one():
    box["state"], metrics = step(box["state"], batch)
    jax.block_until_ready(metrics)
    return metrics

  t = common.timed(one, steps)
  t["compile_s"] = t.pop("first_s")
  t["loss"] = float(one()["loss"])
  return t


def sft_batch(tokens_bt: np.ndarray) -> Dict[str, np.ndarray]:
  """Our SFT batch layout ([M=1, b, t]) of ``tokens_bt``: every token after the first a target."""
  b, t = tokens_bt.shape
  return {"tokens": tokens_bt[None], "loss_mask": np.ones((1, b, t), np.int32),
          "segment_ids": np.ones((1, b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (1, b, t)).copy()}


def ours_sft(cfg: common.BenchConfig, params, compute_dtype: str,
             tokens_bt: Optional[np.ndarray] = None, **model_kw) -> Dict[str, Any]:
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.objectives import sft_objective  # pylint: disable=g-import-not-at-top
  tokens_bt = common.sft_tokens(cfg) if tokens_bt is None else tokens_bt
  model = cfg.llama(compute_dtype=compute_dtype, **model_kw)
  t = _run_our_step(model, params, sft_objective(model), sft_batch(tokens_bt), cfg.steps)
  n = tokens_bt.size
  t["tokens_per_s"] = n / t["median_s"]
  t["model_flops_per_s"] = llama.flops_per_token(model, tokens_bt.shape[1]) * n / t["median_s"]
  return t


def hf_sft(cfg: common.BenchConfig, hf_model, tokens_bt: Optional[np.ndarray] = None
           ) -> Dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  tokens_bt = common.sft_tokens(cfg) if tokens_bt is None else tokens_bt
  model = hf_model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=5.5e-6, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0)
  ids = torch.from_numpy(tokens_bt.astype(np.int64))
  box = {}

  def one():
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    box["loss"] = float(loss.detach())

  t = common.timed(one, cfg.steps)
  t["loss"] = box["loss"]
  t["tokens_per_s"] = tokens_bt.size / t["median_s"]
  model.eval()
  return t


# ---- DPO -----------------------------------------------------------------------------------------

def our_dpo_batch(cfg: common.BenchConfig, params, pairs: Dict[str, np.ndarray]
                  ) -> Dict[str, np.ndarray]:
  """Our DPO batch ([M=1, p, t]) with reference log-probs precomputed by our model (f32, the
  initial params: reference = policy at step 0, as in the method). Not timed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import losses  # pylint: disable=g-import-not-at-top
  model = cfg.llama()
  p, t_prompt = pairs["prompt_bt"].shape
  batch = {}
  for side in ("chosen", "rejected"):
    tokens_bt = np.concatenate([pairs["prompt_bt"], pairs[f"{side}_bt"]], axis=1)
    mask_bt = np.zeros_like(tokens_bt)
    mask_bt[:, t_prompt:] = 1
    batch[f"{side}_tokens"] = tokens_bt[None]
    batch[f"{side}_loss_mask"] = mask_bt[None]
    batch[f"{side}_attention_mask"] = np.ones_like(tokens_bt)[None]
    logps_fn = jax.jit(lambda prm, tk, m: losses.sequence_logps(prm, model, tk, m)[0])
    batch[f"ref_{side}_logps"] = np.asarray(
        logps_fn(params, jnp.asarray(tokens_bt), jnp.asarray(mask_bt)), np.float32)[None]
  return batch


def ours_dpo(cfg: common.BenchConfig, params, batch: Dict[str, np.ndarray],
             compute_dtype: str) -> Dict[str, Any]:
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.objectives import dpo_objective  # pylint: disable=g-import-not-at-top
  model = cfg.llama(compute_dtype=compute_dtype)
  t = _run_our_step(model, params, dpo_objective(model, beta=0.1), batch, cfg.steps)
  p, seq = batch["chosen_tokens"].shape[1:]
  t["pairs_per_s"] = p / t["median_s"]
  t["model_flops_per_s"] = llama.flops_per_token(model, seq) * 2 * p * seq / t["median_s"]
  return t


def _word_tokenizer(vocab: int):
  """A transformers fast tokenizer whose words "w<i>_" are the ids i: TRL tokenises text, so the
  pairs are given as such words and reach the model as exactly our ids. (The trailing "_" matters:
  transformers matches special tokens as substrings, so with "t<i>" the BOS "t1" split "t17".)"""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  word = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {f"w{i}_": i for i in range(vocab)}, unk_token="w0_"))
  word.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=word, bos_token="w1_", eos_token="w2_", pad_token="w0_", unk_token="w0_")


def trl_dpo(cfg: common.BenchConfig, hf_model, pairs: Dict[str, np.ndarray], workdir: str
            ) -> Dict[str, Any]:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    import trl  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return common.skipped(f"TRL not installed ({e}); pip install trl (the `bench` extra)")
  text = lambda ids_t: " ".join(f"w{int(i)}_" for i in ids_t)
  p = pairs["prompt_bt"].shape[0]
  rows = [{"prompt": text(pairs["prompt_bt"][i]), "chosen": " " + text(pairs["chosen_bt"][i]),
           "rejected": " " + text(pairs["rejected_bt"][i])} for i in range(p)]
  n_steps = cfg.steps + 1
  dataset = datasets.Dataset.from_list(rows * n_steps)
  step_s = []

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      step_s.append(time.perf_counter() - self.start)

  args = trl.DPOConfig(
      output_dir=workdir, per_device_train_batch_size=p, max_steps=n_steps, learning_rate=1e-6,
      lr_scheduler_type="linear", beta=0.1, precompute_ref_log_probs=True, max_length=None,
      gradient_checkpointing=False, bf16=False, use_cpu=True, report_to=[], save_strategy="no",
      logging_steps=10 ** 6, dataloader_num_workers=0, disable_tqdm=True, seed=0,
      max_grad_norm=1.0)
  model = hf_model.train()
  start = time.perf_counter()
  trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset,
                           processing_class=_word_tokenizer(cfg.vocab), callbacks=[Clock()])
  setup_s = time.perf_counter() - start
  batch = next(iter(trainer.get_train_dataloader()))
  n_tokens = int(batch["input_ids"].shape[1])
  if n_tokens != cfg.seq:
    raise RuntimeError(f"TRL's batch has {n_tokens} tokens per row, ours {cfg.seq}: the "
                       "word tokenizer did not reproduce the ids")
  trainer.train()
  model.eval()
  timed_s = step_s[1:]
  med = float(np.median(timed_s))
  return {"median_s": med, "runs_s": [round(s, 4) for s in timed_s], "first_s": step_s[0],
          "setup_s_untimed": setup_s, "pairs_per_s": p / med, "trl_seq_len": n_tokens,
          "timed": "DPOTrainer.train() optimizer steps (callback on_step_begin..on_step_end); "
                   "reference log-probs precomputed by TRL before training"}


# ---- growth --------------------------------------------------------------------------------------

def seq_growth(cfg: common.BenchConfig, params, compute_dtype: str = "bfloat16"
               ) -> Dict[str, Any]:
  """Our SFT step time at each ``growth_seqs`` length with ``growth_rows`` rows."""
  out = {}
  for seq in cfg.growth_seqs:
    tokens_bt = common.sft_tokens(cfg, rows=cfg.growth_rows, seq=seq)
    t = ours_sft(cfg, params, compute_dtype, tokens_bt=tokens_bt)
    out[str(seq)] = {"median_s": t["median_s"], "tokens_per_s": t["tokens_per_s"],
                     "compile_s": t["compile_s"]}
  return out


def compile_growth(cfg: common.BenchConfig, compute_dtype: str = "bfloat16") -> Dict[str, Any]:
  """Seconds to lower + compile our SFT train step at each depth of ``growth_depths`` (layers run
  under ``lax.scan``, so this should not grow with depth). Nothing is executed."""
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import state as st  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.objectives import sft_objective  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.step import batch_shardings, train_step_fn  # pylint: disable=g-import-not-at-top
  mesh = shd.make_mesh(shd.MeshConfig())
  batch = sft_batch(common.sft_tokens(cfg))
  out = {}
  for depth in cfg.growth_depths:
    model = cfg.llama(compute_dtype=compute_dtype, n_layers=depth)
    tx, schedule, sh = _our_state(model, mesh, cfg.steps)
    abstract = st.abstract_state(model, tx, sh)
    fn = jax.jit(train_step_fn(sft_objective(model), tx, schedule, sh.params),
                 in_shardings=(sh, batch_shardings(batch, mesh), None),
                 out_shardings=(sh, shd.replicated(mesh)), donate_argnums=(0,))
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      lowered = fn.lower(abstract, abstract_batch, None)
    lower_s = time.perf_counter() - start
    lowered.compile()
    out[str(depth)] = {"lower_s": lower_s, "compile_s": time.perf_counter() - start - lower_s}
  return out
