"""Shared helpers of the training tests (no tests here): a tiny tokenizer, tiny data sets, a tiny
model, and running a python snippet in a subprocess with 8 fake CPU devices.

Imports nothing heavy at module level, so a subprocess can set ``XLA_FLAGS`` before jax loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the a cat dog bird runs jumps sleeps over under near blue red green big small house "
         "tree river hill quickly slowly today yes no one two three four five").split()


def corpus(n: int = 300, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(n)]


def make_tokenizer(directory: str):
  """A 300-piece SentencePiece model trained on the word list (deterministic)."""
  from selfreward_jax.tokenizer import train_sentencepiece  # pylint: disable=g-import-not-at-top
  path = os.path.join(directory, "tok.model")
  if os.path.exists(path):
    from selfreward_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    return Tokenizer(path)
  return train_sentencepiece(corpus(), os.path.join(directory, "tok"), vocab_size=300)


def sentence(rng, n: int) -> str:
  return " ".join(rng.choice(WORDS, n))


def sft_records(n: int, seed: int = 0, prompt_words: int = 5, response_words: int = 8):
  rng = np.random.default_rng(seed)
  return [{"prompt": sentence(rng, prompt_words), "response": sentence(rng, response_words)}
          for _ in range(n)]


def pair_records(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    out.append({"prompt": sentence(rng, 5), "chosen": sentence(rng, 6),
                "rejected": sentence(rng, 4 + int(rng.integers(0, 5)))})
  return out


def write_lines(path: str, records) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return path


def tiny_config(vocab_size: int, **kw):
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  return llama.LlamaConfig.tiny(vocab_size=vocab_size, **kw)


FAST = {"xla_backend_optimization_level": 0}  # ~4x faster CPU compiles; the test models are tiny


def init_params(config, seed: int = 0):
  """Jitted ``llama.init_params`` (eagerly it compiles one small program per parameter shape)."""
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  return jax.jit(llama.init_params, static_argnums=0, compiler_options=FAST)(
      config, jax.random.PRNGKey(seed))


def env(devices: int = 1, fast_compile: bool = True) -> dict:
  """Environment of a test subprocess: ``devices`` fake CPU devices, optionally XLA -O0."""
  e = dict(os.environ)
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  if fast_compile:
    e["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def run_python(code: str, devices: int = 8, timeout: int = 240) -> str:
  """Runs ``code`` in a fresh interpreter with ``devices`` fake CPU devices; returns stdout and
  raises with the stderr tail on failure."""
  proc = subprocess.run([sys.executable, "-c", code], env=env(devices), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-6000:]}")
  return proc.stdout
