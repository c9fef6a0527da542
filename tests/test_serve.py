"""End-to-end serving: ``python -m selfreward_jax.serve`` in a subprocess on a free loopback port,
queried with JetStream's own gRPC stub; its greedy text must equal the offline Sampler's."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, make_hf_llama

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a self-rewarding language model judges its own answers",
    "Tokenizers split text into pieces; byte fallback covers everything else.",
    "JAX programs are traced, compiled with XLA and run on TPU, GPU or CPU.",
] * 50


@pytest.fixture(scope="module")
def served_model(tmp_path_factory):
  """An HF dir with a tiny random Llama (vocab = a test-trained SentencePiece model's) and the
  tokenizer.model next to it."""
  from selfreward_jax.tokenizer import train_sentencepiece
  d = tmp_path_factory.mktemp("served")
  tok = train_sentencepiece(CORPUS, str(d / "tokenizer"), vocab_size=320)
  model = make_hf_llama(vocab=tok.vocab_size, max_pos=256, seed=3)
  model.save_pretrained(str(d))
  return str(d), str(d / "tokenizer.model"), tok


def _start_server(ckpt, tok_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-m", "selfreward_jax.serve", f"--checkpoint={ckpt}",
         f"--tokenizer={tok_path}", "--port=0", "--temperature=0", "--max_concurrent=4",
         "--max_prefill_length=64", "--max_decode_length=128", "--dtype=float32",
         "--compute_dtype=float32"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  line = proc.stdout.readline()
  if not line.startswith("serving on "):
    proc.kill()
    raise AssertionError(f"server did not start: {line}\n{proc.stderr.read()[-4000:]}")
  return proc, line.split()[-1]


def _decode(address, text, max_tokens):
  import grpc
  from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc
  with grpc.insecure_channel(address) as channel:
    stub = jetstream_pb2_grpc.OrchestratorStub(channel)
    req = jetstream_pb2.DecodeRequest(
        text_content=jetstream_pb2.DecodeRequest.TextContent(text=text), max_tokens=max_tokens)
    texts, ids = [], []
    for resp in stub.Decode(req, timeout=60):
      sample = resp.stream_content.samples[0]
      texts.append(sample.text)
      ids.extend(sample.token_ids)
  return "".join(texts), ids


def test_served_greedy_text_equals_offline_sampler(served_model):
  ckpt, tok_path, tok = served_model
  proc, address = _start_server(ckpt, tok_path)
  try:
    assert address.startswith("127.0.0.1:")
    prompts = ["the quick brown", "a self-rewarding model"]
    served = [_decode(address, p, max_tokens=20) for p in prompts]
  finally:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    stop_s = time.perf_counter() - t0
  assert proc.returncode == 0, err[-4000:]
  assert "stopped" in out
  assert stop_s < 10, f"server took {stop_s:.1f}s to stop"

  from selfreward_jax.checkpoint.hf import load_hf_checkpoint
  from selfreward_jax.sampling.sampler import Sampler
  config, params = load_hf_checkpoint(ckpt, dtype="float32",
                                      config_overrides={"compute_dtype": "float32"})
  sampler = Sampler(config, params, max_concurrent=2, max_prefill_length=64,
                    max_decode_length=128)
  ids = [tok.encode(p, bos=True) for p in prompts]
  offline = sampler.generate(ids, max_new_tokens=20, stop_ids=(tok.eos_id, tok.pad_id))
  for (text, served_ids), [offline_ids] in zip(served, offline):
    assert served_ids == offline_ids
    # JetStream streams pieces with "▁" as a space, so the first piece keeps its leading space,
    # which SentencePiece's whole-sequence decode drops.
    assert text in (tok.decode(offline_ids), " " + tok.decode(offline_ids))
    assert len(offline_ids) > 0
