"""Language-model pretraining of M0 on the synthetic corpus, built on the train package.

``train_lm`` is plain next-token prediction over whole documents (loss on every non-pad token but
the first of each document, which nothing predicts). It reuses the SFT machinery unchanged: each
document becomes an ``SFTExample`` whose loss mask is 1 on every token, batches are packed rows
(``data.batching``, segment ids keep documents apart), the objective is ``sft_objective`` (mean
NLL over the masked tokens, i.e. over all of them), and ``train.loop.run_training`` provides the
checkpoints, resume, metrics and non-finite guard. So a pretraining run is kill-safe exactly like
an SFT run: re-calling ``train_lm`` with the same workdir and documents resumes from the newest
checkpoint (or restores the finished state).

Documents (``LMDocument``) are either a chat turn (``prompt``/``response``: tokenized with the
Llama 2 chat template exactly as SFT and sampling see it, ``Tokenizer.encode_chat_example``) or
raw text (``text``: BOS + text + EOS, e.g. generic lines or few-shot task lists).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional, Sequence

import numpy as np
from jax.sharding import Mesh

from selfreward_jax.data import batching
from selfreward_jax.data.jsonl import write_json
from selfreward_jax.model import llama
from selfreward_jax.train import loop, optim
from selfreward_jax.train.config import SFTConfig
from selfreward_jax.train.objectives import sft_objective
from selfreward_jax.train.sft import sft_batcher

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LMDocument:
  """One pretraining document: a chat turn (``prompt`` and ``response``) or raw ``text``.

  ``kind`` is provenance only (``"correct"``, ``"wrong"``, ``"judge"``, ``"task_list"``,
  ``"generic"``, ...), recorded in the corpus file and counted in the stats.
  """

  kind: str
  prompt: Optional[str] = None
  response: Optional[str] = None
  text: Optional[str] = None

  def __post_init__(self):
    chat = self.prompt is not None and self.response is not None
    if chat == (self.text is not None):
      raise ValueError(f"LMDocument({self.kind!r}): give prompt+response or text, not both/neither")

  def to_dict(self) -> dict:
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def tokenize_documents(docs: Sequence[LMDocument], tokenizer, max_len: int
                       ) -> tuple[List[batching.SFTExample], batching.SkipStats]:
  """Documents -> ``SFTExample``s with a loss mask of ones (full-sequence LM loss).

  Documents longer than ``max_len`` tokens are dropped and counted (``too_long``), like SFT data.
  """
  stats = batching.SkipStats(path="<pretraining corpus>")
  out = []
  for i, d in enumerate(docs):
    if d.text is not None:
      ids = tokenizer.encode(d.text, bos=True, eos=True)
    else:
      ids, _ = tokenizer.encode_chat_example(d.prompt, d.response)
    if len(ids) > max_len:
      stats.skip("too_long", i)
      continue
    ids_n = np.asarray(ids, np.int32)
    out.append(batching.SFTExample(ids_n, np.ones_like(ids_n), i))
  stats.kept = len(out)
  return out, stats


def train_lm(model_config: llama.LlamaConfig, params, tokenizer, docs: Sequence[LMDocument],
             config: SFTConfig, workdir: str, mesh: Optional[Mesh] = None, *,
             on_step: Optional[loop.OnStep] = None):
  """Pretrains ``params`` on ``docs`` with the full-sequence LM loss; returns float32 params.

  Args:
    model_config: the model (``config.train`` may override dropout / remat / compute dtype).
    params: initial params, consumed (donated to the train state).
    tokenizer: ``selfreward_jax.tokenizer.Tokenizer``.
    docs: the corpus; must be identical on a resume (the data fingerprint is checked).
    config: batching, steps and optimizer (an ``SFTConfig``; ``pack=True`` recommended).
    workdir: checkpoints, ``metrics.jsonl``, ``data_stats.json`` (see ``train.loop``).
    mesh: default: all devices on the fsdp axis.
    on_step: ``(step, metrics) -> None`` after every step (e.g. a test's pause point).
  """
  tc = config.train
  mesh = loop.mesh_or_default(mesh)
  train_config = tc.model_config(model_config)
  examples, stats = tokenize_documents(docs, tokenizer, tc.max_len)
  if not examples:
    raise ValueError(f"train_lm: no document fits max_len={tc.max_len}")
  stats.log(log)
  write_json(os.path.join(workdir, "data_stats.json"), stats.to_dict())
  make_batcher = lambda pos: sft_batcher(examples, config, tokenizer.pad_id, pos)
  total = tc.num_steps or make_batcher(batching.DataPosition()).count_steps(tc.num_epochs)
  tx, schedule = optim.make_optimizer(config.optim, total)
  spec = loop.LoopSpec(name="pretrain", model_config=train_config,
                       objective=sft_objective(train_config), tx=tx, schedule=schedule,
                       make_batcher=make_batcher, total_steps=total,
                       fingerprint=batching.fingerprint(examples))
  state = loop.run_training(spec, params, tc, workdir, mesh, on_step=on_step)
  return state.params
