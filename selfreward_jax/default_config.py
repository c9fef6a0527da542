"""The embedded default: the whole method, M0 -> M1 -> M2 -> M3, on a laptop CPU in minutes.

``python -m selfreward_jax.main`` (no ``--config``) runs this; ``configs/tiny.py`` returns it too.

World: the synthetic, verifiable task world (``selfreward_jax.synthetic``) at difficulty 1 with six
families (``add, subtract, extreme, sort, repeat, count_items``; the world's author recommends ten,
adding ``uppercase, pair_sum, factor, word_pick``, but at this compute budget the model learns
fewer families faster). M0 is a 2M-parameter Llama (d=256, 2 layers, GQA 4:2, bf16 compute with
f32 accumulation, a 1024-piece tokenizer) pretrained for 450 steps inside the ``m0`` stage on
worked tasks (half of them wrong), judgements (90% with the oracle's points) and few-shot task
lists (``synthetic.pipeline``). Then the paper's pipeline unchanged: SFT baseline on IFT, EFT
targets written by it and kept where its scores order the 3 responses of a group like the oracle
does, M1 = SFT on IFT + EFT, and two self-rewarding iterations (self-instruction, N=4 candidates,
K=3 sampled judgements, max-vs-min pairs, DPO with M_t as reference). The ``eval`` and ``report``
stages measure both axes against the oracle (``eval.evaluate``, ``eval.report``).

Where the paper's settings do not fit a 2M-parameter model on 2 CPU cores, we say so:

* learning rates are ~100x the paper's (a tiny model trained for a hundred steps), no dropout;
* the ROUGE-L filter threshold is 0.9, not 0.7: every prompt of a family shares its template's
  words, so at 0.7 many new arithmetic prompts would count as "similar";
* the judge prompt is ``judge_short`` (same additive rubric, fewer words), the self-instruction
  prompt ``self_instruct_short`` (one-line header, same 8-shot list), and generations are capped
  at a few dozen tokens (answers are ~10 tokens, judgements ~25): the sampler's KV cache (288) is
  what a decode step costs on a CPU;
* sizes (prompts per iteration, EFT groups, eval sets) are chosen so the run takes minutes.
"""

from __future__ import annotations

import ml_collections

from selfreward_jax.selfreward.config import default_config_dict


def get_config() -> ml_collections.ConfigDict:
  """The tiny synthetic-world run (see the module docstring)."""
  d = default_config_dict()
  d["seed"] = 0
  d["model"] = {"preset": "tiny", "vocab_size": 1024, "dim": 256, "n_layers": 2, "n_heads": 4,
                "n_kv_heads": 2, "ffn_dim": 688, "max_seq_len": 1024, "compute_dtype": "bfloat16"}
  d["data"].update(source="synthetic", eft_eval_fraction=0.25, eft_thin_most_common=True)
  d["synthetic"] = {
      "families": ["add", "subtract", "extreme", "sort", "repeat", "count_items"],
      "difficulty": 1,
      "n_ift": 1000,
      "n_eft": 240,
      "eft_responses": 3,
      "n_eval": 200,
      "pretrain": {
          "documents": 24000, "p_correct": 0.5, "judge_share": 0.25, "p_judge_correct": 0.9,
          "task_list_share": 0.08,
          "train": {"batch_size": 16, "max_len": 256, "num_steps": 450, "dropout_rate": 0.0,
                    "save_every": 100, "max_to_keep": 2, "tensorboard": False},
          "optim": {"learning_rate": 3e-3, "end_learning_rate": 3e-4, "schedule": "cosine",
                    "warmup_steps": 30},
      },
  }
  common = dict(max_len=256, dropout_rate=0.0, tensorboard=False, max_to_keep=2)
  d["sft"]["train"].update(batch_size=16, num_epochs=1.0, save_every=50, **common)
  d["sft"]["optim"].update(learning_rate=5e-4, end_learning_rate=5e-5, schedule="cosine",
                           warmup_steps=5)
  d["dpo"]["train"].update(batch_size=16, num_epochs=2.0, save_every=50, **common)
  d["dpo"]["optim"].update(learning_rate=3e-5, end_learning_rate=3e-6, schedule="linear")
  d["dpo"].update(beta=0.1)
  d["loop"].update(iterations=2, num_prompts=128, num_candidates=4, num_judgements=3,
                   judge_template="judge_short", self_instruct_template="self_instruct_short",
                   chunk_size=64, max_prompt_rounds=10)
  d["loop"]["filters"].update(min_words=2, rouge_threshold=0.9)
  d["loop"]["prompt_sampling"].update(temperature=0.6, top_p=0.9, max_new_tokens=32)
  d["loop"]["candidate_sampling"].update(temperature=0.7, top_p=0.9, max_new_tokens=32)
  d["loop"]["judge_sampling"].update(temperature=0.7, top_p=0.9, max_new_tokens=40)
  d["sampler"].update(max_concurrent=128, max_prefill_length=256, max_decode_length=288)
  return ml_collections.ConfigDict(d)
