"""Llama 2 70B (the paper's model) on OASST seed data with the paper's hyperparameters.

Mesh: tensor=4 (two KV heads per tensor shard), fsdp over the rest, full remat. The memory planner
(`python -m selfreward_jax.plan --config=configs/llama2_70b.py`) puts this at 26.1 GiB per chip
on a v4-128 slice as (data=1, fsdp=16, tensor=4), within its 27.2 GiB usable; tensor=8 needs
30.8 GiB there (more activation rows per chip). On v5p-128 the planner picks (4, 4, 4).
"""

from selfreward_jax.configs_common import paper_config


def get_config():
  return paper_config(preset="llama2_70b", mesh=dict(data=1, fsdp=-1, tensor=4), remat="full",
                      max_concurrent=128)
