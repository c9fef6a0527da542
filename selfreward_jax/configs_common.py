"""Shared pieces of the shipped configs (``configs/*.py``)."""

from __future__ import annotations

import ml_collections

from selfreward_jax.selfreward.config import default_config_dict


def paper_config(*, preset: str, mesh: dict, remat: str, max_concurrent: int) -> ml_collections.ConfigDict:
  """The paper's setup (PAPER.md) for a Llama 2 preset on OASST seed data.

  SFT: lr 5.5e-6 cosine to 1.1e-6, batch 16, dropout 0.1, loss on targets only.
  DPO: lr 1e-6 decaying to 1e-7, batch 16, dropout 0.1, beta 0.1, checkpoint every 200 steps.
  Loop: 8-shot self-instruction at T=0.6/top-p 0.9, N=4 candidates at T=0.7/top-p 0.9, K=3
  judgements, pairs max-vs-min with ties dropped, two iterations (M1 -> M2 -> M3).
  """
  d = default_config_dict()
  d["model"] = {"preset": preset, "compute_dtype": "bfloat16", "max_seq_len": 4096}
  d["data"]["source"] = "oasst"
  d["data"]["oasst"].update(source="OpenAssistant/oasst2", lang="en", n_ift=3200)
  d["data"]["eft_thin_most_common"] = True
  for stage in ("sft", "dpo"):
    d[stage]["train"].update(batch_size=16, max_len=2048, dropout_rate=0.1, remat=remat,
                             compute_dtype="bfloat16")
  d["sft"]["optim"].update(learning_rate=5.5e-6, end_learning_rate=1.1e-6, schedule="cosine")
  d["dpo"]["optim"].update(learning_rate=1e-6, end_learning_rate=1e-7, schedule="linear")
  d["dpo"]["train"].update(save_every=200)
  d["dpo"].update(beta=0.1)
  d["loop"].update(iterations=2, num_prompts=8000, num_candidates=4, num_judgements=3,
                   chunk_size=256, max_prompt_rounds=200)
  d["sampler"].update(max_concurrent=max_concurrent, max_prefill_length=2048, max_decode_length=3072)
  d["mesh"].update(mesh)
  return ml_collections.ConfigDict(d)
