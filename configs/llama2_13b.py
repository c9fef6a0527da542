"""Llama 2 13B on OASST seed data with the paper's hyperparameters (PAPER.md).

Mesh: fsdp over the slice with tensor=2 (40 heads split in two), full remat; a v4-32 / v5e-32.
"""

from selfreward_jax.configs_common import paper_config


def get_config():
  return paper_config(preset="llama2_13b", mesh=dict(data=1, fsdp=-1, tensor=2), remat="full",
                      max_concurrent=64)
