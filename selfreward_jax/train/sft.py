"""Supervised fine-tuning: M0 + seed data (IFT, EFT) -> M1.

``train_sft(model_config, params, tokenizer, data_path, sft_config, workdir)`` reads a JSONL of
``{"prompt", "response"}`` or ``{"messages": [...]}`` records (``data.batching``), trains with the
mean NLL of the response tokens (paper: lr 5.5e-6 cosine to 1.1e-6, batch 16, dropout 0.1), and
returns the final float32 params, sharded on ``mesh``. Re-calling it with the same workdir resumes
(or, when finished, just restores the final state).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Optional, Union

from jax.sharding import Mesh

from selfreward_jax.data import batching
from selfreward_jax.data.jsonl import write_json
from selfreward_jax.model import llama
from selfreward_jax.train import loop, optim
from selfreward_jax.train.config import SFTConfig
from selfreward_jax.train.objectives import sft_objective

log = logging.getLogger(__name__)

ExportFn = Callable[[str, llama.LlamaConfig, Any], None]


def sft_batcher(examples, sft_config: SFTConfig, pad_id: int,
                position: batching.DataPosition = batching.DataPosition()) -> batching.Batcher:
  """The deterministic batcher of a list of ``SFTExample``s."""
  tc = sft_config.train
  return batching.Batcher(
      [len(e) for e in examples],
      functools.partial(batching.collate_sft, examples, pad_id=pad_id),
      batch_size=tc.batch_size, microbatches=tc.microbatches, buckets=tc.bucket_lengths(),
      seed=tc.seed, shuffle=tc.shuffle, pack=sft_config.pack, position=position)


def train_sft(
    model_config: llama.LlamaConfig,
    params,
    tokenizer,
    data_path: str,
    sft_config: SFTConfig = SFTConfig(),
    workdir: str = "workdir/sft",
    mesh: Optional[Mesh] = None,
    *,
    on_step: Optional[loop.OnStep] = None,
    export_hf: Union[bool, ExportFn, None] = None,
):
  """Fine-tunes ``params`` on ``data_path``; returns the final float32 params (sharded).

  Args:
    model_config: the model; ``sft_config.train`` may override dropout, remat, compute dtype.
    params: initial params (M0). Consumed: they become the train state and are donated.
    tokenizer: a ``selfreward_jax.tokenizer.Tokenizer``.
    data_path: SFT JSONL (malformed lines raise ``DataError`` with file:line; empty responses and
      over-long examples are skipped and counted in ``<workdir>/data_stats.json``).
    workdir: the run directory (checkpoints, metrics; see ``train.loop``).
    mesh: default: all devices on the fsdp axis.
    on_step: ``(step, metrics) -> None`` after every step.
    export_hf: True: write ``<workdir>/hf`` with ``checkpoint.hf.save_hf_checkpoint`` (in
      ``model_config.param_dtype``, with the tokenizer's model file); a callable
      ``(path, config, params)``: use it instead; None: no export (see ``loop.export_final``).

  Raises:
    NonFiniteLossError: a NaN/inf loss; the newest checkpoint is the last good state.
  """
  tc = sft_config.train
  mesh = loop.mesh_or_default(mesh)
  config = tc.model_config(model_config)
  loop.check_setup(tc, config, tokenizer, mesh)
  examples, stats = batching.load_sft_examples(data_path, tokenizer, tc.max_len,
                                               system=tc.system_prompt)
  stats.log(log)
  write_json(os.path.join(workdir, "data_stats.json"), stats.to_dict())
  make_batcher = lambda pos: sft_batcher(examples, sft_config, tokenizer.pad_id, pos)
  total = tc.num_steps or make_batcher(batching.DataPosition()).count_steps(tc.num_epochs)
  tx, schedule = optim.make_optimizer(sft_config.optim, total)
  spec = loop.LoopSpec(name="sft", model_config=config, objective=sft_objective(config), tx=tx,
                       schedule=schedule, make_batcher=make_batcher, total_steps=total,
                       fingerprint=batching.fingerprint(examples))
  state = loop.run_training(spec, params, tc, workdir, mesh, on_step=on_step)
  loop.export_final(export_hf, workdir, model_config, state.params, tokenizer)
  return state.params
