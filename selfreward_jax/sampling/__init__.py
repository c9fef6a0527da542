"""Sampling: JetStream engine, offline continuous-batching sampler, sampling ops.

Importing this package imports neither JetStream nor TensorFlow; the names below are loaded on
first use (``Engine``/``Sampler`` import ``jetstream.engine``, which pulls in seqio/TensorFlow).
"""

import importlib

_LAZY = {
    "Engine": "selfreward_jax.sampling.engine",
    "Prefix": "selfreward_jax.sampling.engine",
    "DecodeState": "selfreward_jax.sampling.engine",
    "Sampler": "selfreward_jax.sampling.sampler",
    "SamplerStats": "selfreward_jax.sampling.sampler",
    "generate_text": "selfreward_jax.sampling.sampler",
    "sample_tokens": "selfreward_jax.sampling.ops",
    "sampling_logits": "selfreward_jax.sampling.ops",
    "token_logprobs": "selfreward_jax.sampling.ops",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'selfreward_jax.sampling' has no attribute {name!r}")
