"""selfreward_jax: Self-Rewarding Language Models (Yuan et al., ICML 2024) in pure JAX.

The public API is listed in ``__all__`` (and in the README). Names are imported lazily, so
``import selfreward_jax`` stays cheap: JetStream (and the TensorFlow it pulls in) is only imported
when the sampler or the server is used.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # model
    "LlamaConfig": "selfreward_jax.model.llama",
    "init_params": "selfreward_jax.model.llama",
    "forward": "selfreward_jax.model.llama",
    "KVCache": "selfreward_jax.model.llama",
    "init_cache": "selfreward_jax.model.llama",
    "unstack_layers": "selfreward_jax.model.llama",
    "param_axes": "selfreward_jax.model.llama",
    # sharding
    "MeshConfig": "selfreward_jax.sharding",
    "make_mesh": "selfreward_jax.sharding",
    "param_shardings": "selfreward_jax.sharding",
    "shard_params": "selfreward_jax.sharding",
    "init_sharded_params": "selfreward_jax.sharding",
    "batch_sharding": "selfreward_jax.sharding",
    # multi-host
    "DistributedConfig": "selfreward_jax.distributed",
    "initialize_distributed": "selfreward_jax.distributed",
    # tokenizer
    "Tokenizer": "selfreward_jax.tokenizer",
    "train_sentencepiece": "selfreward_jax.tokenizer",
    "to_hf_tokenizer": "selfreward_jax.tokenizer",
    # checkpoints
    "load_hf_checkpoint": "selfreward_jax.checkpoint.hf",
    "save_hf_checkpoint": "selfreward_jax.checkpoint.hf",
    "CheckpointError": "selfreward_jax.checkpoint.hf",
    "load_meta_checkpoint": "selfreward_jax.checkpoint.meta",
    "save_model": "selfreward_jax.checkpoint.params",
    "load_model": "selfreward_jax.checkpoint.params",
    # data
    "DataError": "selfreward_jax.data.jsonl",
    "read_jsonl": "selfreward_jax.data.jsonl",
    "write_jsonl": "selfreward_jax.data.jsonl",
    "OasstConfig": "selfreward_jax.data.oasst",
    "build_seed_data": "selfreward_jax.data.oasst",
    "load_messages": "selfreward_jax.data.oasst",
    # losses and training
    "sequence_logps": "selfreward_jax.train.losses",
    "sft_loss": "selfreward_jax.train.losses",
    "dpo_loss": "selfreward_jax.train.losses",
    "TrainConfig": "selfreward_jax.train.config",
    "SFTConfig": "selfreward_jax.train.config",
    "DPOConfig": "selfreward_jax.train.config",
    "OptimConfig": "selfreward_jax.train.optim",
    "train_sft": "selfreward_jax.train.sft",
    "train_dpo": "selfreward_jax.train.dpo",
    # sampling (imports JetStream on first use)
    "Sampler": "selfreward_jax.sampling.sampler",
    "generate_text": "selfreward_jax.sampling.sampler",
    # the method
    "parse_judge_score": "selfreward_jax.selfreward.judge",
    "load_template": "selfreward_jax.selfreward.templates",
    "build_pairs": "selfreward_jax.selfreward.pairs",
    "PromptFilter": "selfreward_jax.selfreward.self_instruct",
    "rouge_l": "selfreward_jax.selfreward.self_instruct",
    "RunConfig": "selfreward_jax.selfreward.config",
    "SelfRewardingRun": "selfreward_jax.selfreward.loop",
    # evaluation
    "reward_metrics": "selfreward_jax.eval.reward_metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'selfreward_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  return __all__
