"""Llama 2 70B (the paper's model) on OASST seed data with the paper's hyperparameters.

Mesh: tensor=8 (one KV head per tensor shard, 64 query heads in eight groups), fsdp over the rest,
full remat; a v4-128 / v5p-128 slice or larger (see ``python -m selfreward_jax.plan``).
"""

from selfreward_jax.configs_common import paper_config


def get_config():
  return paper_config(preset="llama2_70b", mesh=dict(data=1, fsdp=-1, tensor=8), remat="full",
                      max_concurrent=128)
