"""DPO on self-made preference pairs: M_t + AIFT(M_t) -> M_{t+1}, with reference M_t.

``train_dpo(model_config, params, tokenizer, pairs_path, dpo_config, workdir)`` reads a JSONL of
``{"prompt", "chosen", "rejected"}`` pairs (``data.batching``), and by default first computes the
reference log-probs of every pair once with the initial params (``compute_reference_logps``,
jitted, pairs sorted by length into bucketed batches) and caches them in an ``.npz`` artifact, so
training then holds a single copy of the weights. ``DPOConfig(reference="in_step")`` instead keeps
a frozen copy of the initial params and recomputes the reference inside every step.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from selfreward_jax import sharding as shd
from selfreward_jax.data import batching
from selfreward_jax.data.jsonl import atomic_open, write_json
from selfreward_jax.model import llama
from selfreward_jax.train import loop, optim
from selfreward_jax.train.config import DPOConfig
from selfreward_jax.train.objectives import dpo_objective, pair_logps
from selfreward_jax.train.step import batch_shardings, put_batch

log = logging.getLogger(__name__)

ExportFn = Callable[[str, llama.LlamaConfig, Any], None]


def compute_reference_logps(params, config: llama.LlamaConfig,
                            pairs: Sequence[batching.PreferencePair], *, batch_size: int,
                            buckets: Sequence[int], mesh: Mesh, pad_id: int = 0,
                            compiler_options: Optional[dict] = None
                            ) -> Tuple[np.ndarray, np.ndarray]:
  """Sequence log-probs of every pair's chosen and rejected response under ``params``.

  Deterministic (no dropout). Pairs are sorted by length and cut into batches of ``batch_size``
  (rounded up to a multiple of data*fsdp), each padded to its bucket: one compiled program per
  bucket. Returns float32 ``(chosen [N], rejected [N])`` in the order of ``pairs``.
  """
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  bs = -(-batch_size // shards) * shards
  order = np.argsort([len(p) for p in pairs], kind="stable")
  param_sh = shd.param_shardings(config, mesh)
  fns = {}
  out_w, out_l = np.zeros(len(pairs), np.float32), np.zeros(len(pairs), np.float32)
  for start in range(0, len(pairs), bs):
    idx = order[start:start + bs]
    rows = [[int(i)] for i in np.concatenate([idx, np.repeat(idx[-1:], bs - len(idx))])]
    length = batching.bucket_for(max(len(pairs[r[0]]) for r in rows), buckets)
    batch = batching.collate_pairs(pairs, rows, length, pad_id)
    batch = put_batch({k: v[None] for k, v in batch.items()}, mesh)
    if length not in fns:
      fn = lambda p, b: pair_logps(p, config, jax.tree.map(lambda x: x[0], b))[:2]
      fns[length] = jax.jit(fn, in_shardings=(param_sh, batch_shardings(batch, mesh)),
                            out_shardings=shd.replicated(mesh),
                            compiler_options=dict(compiler_options) if compiler_options else None)
    with jax.set_mesh(mesh):
      w, l = jax.device_get(fns[length](params, batch))
    out_w[idx], out_l[idx] = w[:len(idx)], l[:len(idx)]
  return out_w, out_l


def params_checksum(params) -> np.ndarray:
  """Per-leaf float64 sums of the params (cheap identity of a reference model)."""
  sums = jax.jit(lambda p: [jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(p)])(params)
  return np.asarray(jax.device_get(sums), np.float64)


def load_or_compute_reference(path: str, params, config, pairs, fingerprint: str, **kw
                              ) -> Tuple[np.ndarray, np.ndarray]:
  """Reference log-probs from the ``.npz`` at ``path`` if it was made for the same pairs
  (fingerprint) and reference params (checksum), else computed and written there atomically."""
  checksum = params_checksum(params)
  if os.path.exists(path):
    with np.load(path) as z:
      if (str(z["fingerprint"]) == fingerprint and z["chosen"].shape == (len(pairs),)
          and np.allclose(z["params_checksum"], checksum, rtol=1e-6, atol=1e-6)):
        log.info("dpo: reference log-probs loaded from %s", path)
        return z["chosen"], z["rejected"]
    log.warning("dpo: %s was made for other pairs or another reference model; recomputing", path)
  chosen, rejected = compute_reference_logps(params, config, pairs, **kw)
  with atomic_open(path, "wb") as f:
    np.savez(f, chosen=chosen, rejected=rejected, fingerprint=np.asarray(fingerprint),
             params_checksum=checksum, lines=np.asarray([p.line for p in pairs], np.int64))
  log.info("dpo: reference log-probs of %d pairs written to %s", len(pairs), path)
  return chosen, rejected


def dpo_batcher(pairs, dpo_config: DPOConfig, pad_id: int, ref_logps=None,
                position: batching.DataPosition = batching.DataPosition()) -> batching.Batcher:
  """The deterministic batcher of a list of ``PreferencePair``s (+ their reference log-probs)."""
  tc = dpo_config.train
  return batching.Batcher(
      [len(p) for p in pairs],
      functools.partial(batching.collate_pairs, pairs, pad_id=pad_id, ref_logps=ref_logps),
      batch_size=tc.batch_size, microbatches=tc.microbatches, buckets=tc.bucket_lengths(),
      seed=tc.seed, shuffle=tc.shuffle, pack=False, position=position)


def train_dpo(
    model_config: llama.LlamaConfig,
    params,
    tokenizer,
    pairs_path: str,
    dpo_config: DPOConfig = DPOConfig(),
    workdir: str = "workdir/dpo",
    mesh: Optional[Mesh] = None,
    *,
    on_step: Optional[loop.OnStep] = None,
    export_hf: Union[bool, ExportFn, None] = None,
):
  """DPO from ``params`` (also the reference model); returns the final float32 params (sharded).

  Args:
    model_config: the model; ``dpo_config.train`` may override dropout, remat, compute dtype.
    params: M_t: the initial policy and the reference. Consumed (donated to the train state); with
      ``reference="in_step"`` they are kept as the frozen reference and the state gets a copy.
    tokenizer: a ``selfreward_jax.tokenizer.Tokenizer``.
    pairs_path: pairs JSONL (malformed lines raise ``DataError`` with file:line; empty responses,
      identical chosen/rejected and over-long pairs are skipped and counted in
      ``<workdir>/data_stats.json``).
    workdir, mesh, on_step, export_hf: as in ``train_sft``.

  Metrics per step include ``loss``, ``chosen_reward``, ``rejected_reward``, ``reward_margin``,
  ``reward_accuracy`` (batch means), ``grad_norm``, ``lr`` and ``tokens_per_s``.
  """
  tc = dpo_config.train
  mesh = loop.mesh_or_default(mesh)
  config = tc.model_config(model_config)
  loop.check_setup(tc, config, tokenizer, mesh)
  pairs, stats = batching.load_preference_pairs(pairs_path, tokenizer, tc.max_len,
                                                system=tc.system_prompt)
  stats.log(log)
  write_json(os.path.join(workdir, "data_stats.json"), stats.to_dict())
  fingerprint = batching.fingerprint(pairs)
  param_sh = shd.param_shardings(config, mesh)
  params = jax.device_put(params, param_sh)

  ref_logps, extra, extra_sh = None, None, None
  if dpo_config.reference == "precomputed":
    path = dpo_config.reference_logps_path or os.path.join(workdir, "reference_logps.npz")
    ref_logps = load_or_compute_reference(
        path, params, config, pairs, fingerprint,
        batch_size=dpo_config.reference_batch_size or tc.batch_size,
        buckets=tc.bucket_lengths(), mesh=mesh, pad_id=tokenizer.pad_id,
        compiler_options=tc.compiler_options)
  else:
    extra, extra_sh = params, param_sh
    params = jax.jit(lambda p: jax.tree.map(lambda x: jnp.copy(x.astype(jnp.float32)), p),
                     out_shardings=param_sh)(params)

  make_batcher = lambda pos: dpo_batcher(pairs, dpo_config, tokenizer.pad_id, ref_logps, pos)
  total = tc.num_steps or make_batcher(batching.DataPosition()).count_steps(tc.num_epochs)
  tx, schedule = optim.make_optimizer(dpo_config.optim, total)
  objective = dpo_objective(config, beta=dpo_config.beta,
                            label_smoothing=dpo_config.label_smoothing,
                            loss_type=dpo_config.loss_type, nll_alpha=dpo_config.nll_alpha,
                            in_step_reference=dpo_config.reference == "in_step")
  spec = loop.LoopSpec(name="dpo", model_config=config, objective=objective, tx=tx,
                       schedule=schedule, make_batcher=make_batcher, total_steps=total,
                       fingerprint=fingerprint, extra=extra, extra_shardings=extra_sh)
  state = loop.run_training(spec, params, tc, workdir, mesh, on_step=on_step)
  loop.export_final(export_hf, workdir, model_config, state.params, tokenizer)
  return state.params
