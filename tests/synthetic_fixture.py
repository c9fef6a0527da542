"""The embedded default shrunk to seconds (tiny model, few prompts, few steps): used by
``tests/test_synthetic_pipeline.py`` through ``python -m selfreward_jax.main --config=<this file>``.
It exercises every stage of the default run, including pretraining, eval and report; the numbers it
produces mean nothing."""

from selfreward_jax.default_config import get_config as default


def get_config():
  c = default()
  c.model.update(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=128, vocab_size=512,
                 compute_dtype="float32")
  c.synthetic.update(n_ift=48, n_eft=16, n_eval=12, tokenizer_tasks=200)
  # mostly judgements: enough for a parsable "Score: N" after a few dozen steps, so the loop
  # makes pairs and every stage runs
  c.synthetic.pretrain.update(documents=1500, judge_share=0.6, task_list_share=0.1)
  fast = {"xla_backend_optimization_level": 0}
  c.synthetic.pretrain.train.update(num_steps=80, batch_size=8, save_every=40, progress=False,
                                    compiler_options=fast)
  c.synthetic.pretrain.optim.update(learning_rate=1e-2, warmup_steps=0)
  for stage in ("sft", "dpo"):
    c[stage].train.update(batch_size=4, num_steps=3, num_epochs=1.0, save_every=2, progress=False,
                          compiler_options=fast)
  c.loop.update(num_prompts=8, max_prompt_rounds=3, chunk_size=8, num_judgements=2)
  c.loop.filters.update(min_words=1, rouge_threshold=1.0)
  c.sampler.update(max_concurrent=16)
  return c
