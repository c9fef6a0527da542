"""Llama 2 7B on OASST seed data with the paper's hyperparameters (PAPER.md).

  python -m selfreward_jax.main --config=configs/llama2_7b.py --workdir=/data/sr7b \
      --config.init.hf_checkpoint=/data/Llama-2-7b-hf

Mesh: all chips on fsdp (ZeRO-3); 7B fits a v4-8 / v5e-8 slice or one 8-GPU node this way.
"""

from selfreward_jax.configs_common import paper_config


def get_config():
  return paper_config(preset="llama2_7b", mesh=dict(data=1, fsdp=-1, tensor=1), remat="dots_no_batch",
                      max_concurrent=64)
